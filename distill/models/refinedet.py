"""RefineDet (Zhang et al., CVPR 2018): anchor refinement module (ARM), transfer connection blocks (TCB) and
object detection module (ODM), with two-step cascaded regression and negative anchor filtering (sec. 3).

Four feature maps of stride 8, 16, 32 and 64 (sec. 4 "Anchors Design"): one anchor scale per map, 4x its
stride in pixels, aspect ratios 0.5 / 1 / 2 (3 anchors per cell). At 320 px the maps are 40, 20, 10, 5
(6375 anchors); any input size works (each stride-2 step gives ceil(h / 2); a deconvolved map is cropped to
the map it is added to).

* ARM: per anchor, 2 logits (background, object) and 4 offsets of the refined anchor from the tiled one.
* TCB (Figure 2): conv-ReLU-conv on the ARM map, + deconvolution of the next-higher TCB output,
  ReLU-conv-ReLU. The TCB outputs are the maps the ODM reads (and the maps distillation sees).
* ODM: per anchor, C + 1 logits and 4 offsets relative to the REFINED anchor.

``forward`` returns the raw heads, packed so that every SSD code path still reads two tensors:
    loc  float32 [B, N, 8]      [..., 0:4] ODM offsets (w.r.t. the refined anchors), [..., 4:8] ARM offsets
                                (w.r.t. the tiled anchors); SSD encoding with variances (box_coder.py)
    conf float32 [B, N, C + 3]  [..., 0:C+1] ODM logits (column 0 = background), [..., C+1:] ARM logits
                                (background, object)
``model.box_coder`` is a :class:`TwoStepBoxCoder`: ``split`` unpacks the heads, ``decode_heads`` is the
two-step decode (``distill.postprocess.decode_outputs`` dispatches to it), ``refine`` gives the refined
anchors. Anchors (``model.anchors(img_size)``) are the tiled ones, normalised cxcywh.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import nn
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from runtime.sizes import as_hw

from .anchors import DefaultBoxGenerator
from .box_coder import DEFAULT_VARIANCES, BoxCoder, xyxy_to_cxcywh
from .layers import conv_bn_act, separable_conv
from .mobilenetv2 import MobileNetV2Backbone
from .ssd import Head, extra_block

STRIDES = (8, 16, 32, 64)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_SCALE = 4.0          # anchor side = 4 x the map's stride (sec. 4)
THETA = 0.99                # negative anchor filtering threshold (sec. 3)


class RefineDetAnchors(DefaultBoxGenerator):
    """Tiled anchors of one input size: on map k (stride s_k) one scale 4 s_k pixels, ratios w/h = 0.5, 1, 2.

    Emission order and the cxcywh-in-[0, 1] format (clipped like SSD's) are those of
    :class:`DefaultBoxGenerator`, whose ``__call__`` builds the grid; only the per-cell shapes differ.
    """

    def __init__(self, img_size: int | Sequence[int], strides: Sequence[int] = STRIDES,
                 aspect_ratios: Sequence[float] = ASPECT_RATIOS, scale: float = ANCHOR_SCALE, clip: bool = True):
        # the parent's linear scale schedule does not apply: its __call__ only needs these four attributes
        self.img_hw = as_hw(img_size)
        self.strides = tuple(int(s) for s in strides)
        self.ratios = tuple(float(r) for r in aspect_ratios)
        self.scale = float(scale)
        self.aspect_ratios = [self.ratios] * len(self.strides)    # one entry per map (checked by __call__)
        self.clip = clip
        self._cache: dict[tuple, torch.Tensor] = {}

    def num_anchors_per_location(self) -> list[int]:
        return [len(self.ratios)] * len(self.strides)

    def cell_shapes(self, k: int) -> list[tuple[float, float]]:
        """(w, h) of map k's anchors, normalised by the input width / height."""
        side = self.scale * self.strides[k]
        h, w = self.img_hw
        return [(side * math.sqrt(r) / w, side / math.sqrt(r) / h) for r in self.ratios]


class RefineDetHeads(NamedTuple):
    """The unpacked heads: ODM offsets [B,N,4] and logits [B,N,C+1], ARM offsets [B,N,4] and logits [B,N,2]."""
    odm_loc: torch.Tensor
    odm_conf: torch.Tensor
    arm_loc: torch.Tensor
    arm_conf: torch.Tensor


class TwoStepBoxCoder(BoxCoder):
    """SSD box coding (inherited ``encode`` / ``decode``) plus RefineDet's two-step decode.

    Args:
        variances: as :class:`BoxCoder`.
        theta: negative anchor filtering: an anchor whose ARM background probability is > theta gets zero
            object scores (1.0 filters nothing).
        two_step: decode the ODM offsets against the refined anchors (False: against the tiled ones, the
            "no two-step regression" ablation of Table 2).
        arm: False when the model has no ARM (see :class:`RefineDet`): the loss leaves out the ARM terms.
    """

    def __init__(self, variances=DEFAULT_VARIANCES, theta: float = THETA, two_step: bool = True, arm: bool = True):
        super().__init__(variances)
        if not 0.0 < theta <= 1.0:
            raise ValueError(f"theta (negative anchor filtering) must be in (0, 1], got {theta}")
        self.theta, self.two_step, self.arm = float(theta), bool(two_step), bool(arm)

    @staticmethod
    def split(loc: torch.Tensor, conf: torch.Tensor) -> RefineDetHeads:
        """Packed heads (loc [B,N,8], conf [B,N,C+3]) -> :class:`RefineDetHeads`."""
        return RefineDetHeads(loc[..., :4], TwoStepBoxCoder.class_logits(conf), loc[..., 4:], conf[..., -2:])

    @staticmethod
    def class_logits(conf: torch.Tensor) -> torch.Tensor:
        """Packed conf [B,N,C+3] -> the ODM's class logits [B,N,C+1] (column 0 = background)."""
        return conf[..., :-2]

    def refine(self, arm_loc: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """ARM offsets [B,N,4] + tiled anchors [N,4] cxcywh -> per-image anchors [B,N,4] cxcywh (normalised):
        the refined anchors (the tiled ones, repeated per image, when ``two_step`` is off)."""
        if not self.two_step:
            return anchors.to(arm_loc).expand(arm_loc.shape[0], -1, -1)
        return xyxy_to_cxcywh(self.decode(arm_loc, anchors))

    def decode_per_image(self, loc: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """loc [B,N,4] against per-image anchors [B,N,4] cxcywh -> boxes [B,N,4] normalised xyxy."""
        return self.decode(loc.reshape(-1, 4), anchors.reshape(-1, 4)).view(loc.shape)

    def keep_mask(self, arm_conf: torch.Tensor) -> torch.Tensor:
        """ARM logits [B,N,2] -> bool [B,N]: True where the anchor survives negative anchor filtering."""
        return arm_conf.float().softmax(-1)[..., 0] <= self.theta

    def decode_heads(self, loc: torch.Tensor, conf: torch.Tensor,
                     anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed heads + tiled anchors [N,4] -> (boxes [B,N,4] normalised xyxy, scores [B,N,C+1] softmax, column
        0 = background): ODM boxes decoded against the refined anchors, object scores of filtered anchors 0."""
        h = self.split(loc.float(), conf.float())
        boxes = self.decode_per_image(h.odm_loc, self.refine(h.arm_loc, anchors))
        scores = h.odm_conf.softmax(-1)
        keep = self.keep_mask(h.arm_conf).unsqueeze(-1).to(scores.dtype)
        return boxes, torch.cat([scores[..., :1], scores[..., 1:] * keep], -1)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (ParseNet; RefineDet sec. 4: 10 on
    conv4_3, 8 on conv5_3). [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, scale: float, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


class VGG16Backbone(nn.Module):
    """VGG-16 truncated as in RefineDet: conv1_1..conv5_3 (torchvision's ``vgg16().features`` layout, so its
    ImageNet state dicts load), pool5 2x2, fc6 / fc7 as convolutions (fc6 3x3 with dilation 3, DeepLab-LargeFOV),
    L2Norm on conv4_3 (10) and conv5_3 (8). Returns [conv4_3 (stride 8), conv5_3 (16), fc7 (32)].

    ``width_mult`` < 1 narrows every layer (small tests); pretrained weights need 1.0."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        cfg = [v if v == "M" else max(8, int(round(v * width_mult))) for v in vgg_cfgs["D"]]
        self.features = make_layers(cfg)
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True         # every stride-2 step gives ceil(h / 2), as the extra layers do
        c4, c5, fc = cfg[12], cfg[16], max(8, int(round(1024 * width_mult)))
        self.fc6 = nn.Conv2d(c5, fc, 3, padding=3, dilation=3)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.norm4, self.norm5 = L2Norm(c4, 10.0), L2Norm(c5, 8.0)
        self.out_channels = [c4, c5, fc]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c4 = self.features[:23](x)                       # through conv4_3 + ReLU
        c5 = self.features[23:30](c4)                    # pool4, conv5_1..conv5_3 + ReLU
        x = self.features[30](c5)                        # pool5
        x = torch.relu(self.fc7(torch.relu(self.fc6(x))))
        return [self.norm4(c4), self.norm5(c5), x]

    @staticmethod
    def adapt_pretrained(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ImageNet VGG-16 weights -> this module's keys: torchvision's ``vgg16`` state dict (fc6 / fc7 subsampled
        from ``classifier.0`` / ``classifier.3``: every 4th filter, fc6's 7x7 taps every 3rd, as DeepLab-LargeFOV
        and SSD's ``vgg16_reducedfc``) or that reduced file itself (``0.weight`` .. ``33.weight``)."""
        out = dict(state)
        w6, w7 = state.get("classifier.0.weight"), state.get("classifier.3.weight")
        if w6 is not None and w7 is not None and w6.shape == (4096, 512 * 7 * 7):
            out["fc6.weight"] = w6.view(4096, 512, 7, 7)[::4, :, ::3, ::3].contiguous()
            out["fc6.bias"] = state["classifier.0.bias"][::4].contiguous()
            out["fc7.weight"] = w7[::4, ::4].reshape(1024, 1024, 1, 1).contiguous()
            out["fc7.bias"] = state["classifier.3.bias"][::4].contiguous()
        reduced = {"31": "fc6", "33": "fc7", **{str(i): f"features.{i}" for i in range(30)}}
        for key, value in state.items():
            idx, _, rest = key.partition(".")
            if idx in reduced and rest in ("weight", "bias"):
                out[f"{reduced[idx]}.{rest}"] = value
        return out


class MobileNetV2Pyramid(MobileNetV2Backbone):
    """MobileNetV2 (torchvision layout) giving three maps: the expansions of blocks 7 (stride 8, 192 ch at width
    1.0) and 14 (stride 16, 576 ch), and the last 1x1 layer (stride 32, 1280 ch), as SSD-Lite attaches to them."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__(width_mult)
        self.out_channels = [self.features[7].conv[0].out_channels, *self.out_channels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.features[7].conv[0](self.features[:7](x))   # stride 8, expansion
        x = self.features[8:14](self.features[7].conv[1:](c3))
        c4 = self.features[14].conv[0](x)                     # stride 16, expansion
        x = self.features[15:](self.features[14].conv[1:](c4))
        return [c3, c4, x]


class TransferConnection(nn.Module):
    """One TCB (Figure 2): conv-ReLU-conv on the ARM map [B,Cin,H,W]; plus the 2x deconvolution of the next-higher
    TCB output (cropped to H x W) unless this is the top map; then ReLU-conv-ReLU -> [B,C,H,W]. ``lite``: the 3x3
    convolutions depthwise-separable (with BatchNorm) and the deconvolution depthwise."""

    def __init__(self, cin: int, channels: int, lite: bool, top: bool):
        super().__init__()
        c = channels
        if lite:
            self.lateral = nn.Sequential(conv_bn_act(cin, c, 1, act=nn.ReLU), conv_bn_act(c, c, 3, groups=c, act=None))
            self.post = nn.Sequential(nn.ReLU(), separable_conv(c, c, act=nn.ReLU))
        else:
            self.lateral = nn.Sequential(nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True),
                                         nn.Conv2d(c, c, 3, padding=1))
            self.post = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.up = None if top else nn.ConvTranspose2d(c, c, 2, 2, groups=c if lite else 1, bias=not lite)

    def forward(self, x: torch.Tensor, higher: torch.Tensor | None = None) -> torch.Tensor:
        y = self.lateral(x)
        if self.up is not None and higher is not None:
            y = y + self.up(higher)[..., :y.shape[-2], :y.shape[-1]]
        return self.post(y)


class RefineDet(nn.Module):
    """Args:
        backbone: module returning maps of stride 8, 16, 32 (``out_channels``: 3 ints).
        extra: module making the stride-64 map from the stride-32 one (``extra_channels`` out).
        num_classes: object classes C (background excluded).
        tcb_channels: width of the TCB outputs (the ODM's maps).
        lite: depthwise-separable TCBs and heads (the MobileNetV2 student).
        theta, two_step: see :class:`TwoStepBoxCoder`.
        tcb: False drops the TCBs: the ODM reads the ARM maps.
        arm: False (with tcb=False, two_step=False, theta=1.0) also drops the ARM's heads and loss: one multi-class
            module on the four maps and the tiled anchors, like SSD -- Table 2's "no TCB" column (sec. 5.1.2:
            "cutting the TCBs ... redefining the loss function in the ARM to directly detect multi-class objects").
            The packed outputs keep their layout: the ARM columns are zeros (no refinement, nothing filtered).
    """

    family = "refinedet"

    def __init__(self, backbone: nn.Module, extra: nn.Module, extra_channels: int, num_classes: int, *,
                 tcb_channels: int = 256, lite: bool = False, theta: float = THETA, two_step: bool = True,
                 tcb: bool = True, arm: bool = True, variances=DEFAULT_VARIANCES):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, background excluded), got {num_classes}")
        self.num_classes = num_classes
        self.backbone, self.extra = backbone, extra
        src = [*backbone.out_channels, extra_channels]
        na = [len(ASPECT_RATIOS)] * len(STRIDES)
        if not arm and (tcb or two_step or theta < 1.0):
            raise ValueError("arm=False (no anchor refinement module) needs tcb=False, two_step=False and theta=1.0, "
                             f"got tcb={tcb}, two_step={two_step}, theta={theta}")
        self.arm_loc, self.arm_conf = (Head(src, na, 4, lite), Head(src, na, 2, lite)) if arm else (None, None)
        self.tcbs = nn.ModuleList([TransferConnection(c, tcb_channels, lite, top=k == len(src) - 1)
                                   for k, c in enumerate(src)]) if tcb else None
        self.feature_channels = [tcb_channels] * len(src) if tcb else src
        self.odm_loc = Head(self.feature_channels, na, 4, lite)
        self.odm_conf = Head(self.feature_channels, na, num_classes + 1, lite)
        self.box_coder = TwoStepBoxCoder(variances, theta, two_step, arm)
        self._init_weights()

    def _init_weights(self):
        new = [self.extra, self.arm_loc or nn.Identity(), self.arm_conf or nn.Identity(), self.odm_loc, self.odm_conf,
               self.tcbs or nn.Identity()]
        for m in (m for part in new for m in part.modules()):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.groups == 1:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def transfer(self, src: list[torch.Tensor]) -> list[torch.Tensor]:
        """ARM maps -> TCB maps (top-down: each TCB adds the deconvolved output of the one above it)."""
        if self.tcbs is None:
            return src
        out: list[torch.Tensor] = []
        higher = None
        for k in reversed(range(len(src))):
            higher = self.tcbs[k](src[k], higher)
            out.insert(0, higher)
        return out

    def forward_features(self, x: torch.Tensor):
        """x float32 [B,3,H,W] normalised -> (loc [B,N,8], conf [B,N,C+3], the four TCB maps [B,C_k,H_k,W_k])."""
        src = list(self.backbone(x))
        src.append(self.extra(src[-1]))
        maps = self.transfer(src)
        odm_loc, odm_conf = self.odm_loc(maps), self.odm_conf(maps)
        if self.arm_loc is None:          # no ARM: zero offsets (the tiled anchors), zero logits (nothing filtered)
            arm_loc, arm_conf = odm_loc.new_zeros(odm_loc.shape), odm_conf.new_zeros(*odm_conf.shape[:-1], 2)
        else:
            arm_loc, arm_conf = self.arm_loc(src), self.arm_conf(src)
        loc = torch.cat([odm_loc, arm_loc], -1)
        conf = torch.cat([odm_conf, arm_conf], -1)
        return loc, conf, maps

    def forward(self, x: torch.Tensor):
        loc, conf, _ = self.forward_features(x)
        return loc, conf

    def feature_sizes(self, img_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """(h, w) of the four maps: each stride-2 step of the network maps h to ceil(h / 2)."""
        h, w = as_hw(img_size)
        sizes = []
        for s in STRIDES:
            steps = int(math.log2(s))
            sizes.append((_halve(h, steps), _halve(w, steps)))
        return sizes

    def anchors(self, img_size: int | Sequence[int]) -> torch.Tensor:
        """float32 [N, 4] normalised cxcywh tiled anchors for a square (or (H, W)) input, cached per size."""
        key = as_hw(img_size)
        cache = self.__dict__.setdefault("_anchor_cache", {})
        if key not in cache:
            cache[key] = RefineDetAnchors(key)(self.feature_sizes(key))
        return cache[key]


# SSD anchor-scale kwargs that presets set for every model (SSD's min_ratio / max_ratio): accepted and unused,
# RefineDet's anchor scales are fixed by the strides.
SSD_ANCHOR_KWARGS = ("min_ratio", "max_ratio")


def _model_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in SSD_ANCHOR_KWARGS}


def _halve(n: int, steps: int) -> int:
    for _ in range(steps):
        n = (n + 1) // 2
    return n


def refinedet_vgg16(num_classes: int, width_mult: float = 1.0, tcb_channels: int | None = None, **options) -> RefineDet:
    """The paper's RefineDet with VGG-16: ARM on conv4_3, conv5_3, fc7 and conv6_2 (conv6_1 1x1 256, conv6_2 3x3
    stride 2, 512), 256-wide TCBs. ``options``: theta, two_step, tcb, arm (see :class:`RefineDet`; SSD's
    min_ratio / max_ratio are ignored)."""
    backbone = VGG16Backbone(width_mult)
    c6 = max(8, int(round(256 * width_mult)))
    c62 = max(8, int(round(512 * width_mult)))
    extra = nn.Sequential(nn.Conv2d(backbone.out_channels[-1], c6, 1), nn.ReLU(inplace=True),
                          nn.Conv2d(c6, c62, 3, stride=2, padding=1), nn.ReLU(inplace=True))
    width = tcb_channels or max(8, int(round(256 * width_mult)))
    return RefineDet(backbone, extra, c62, num_classes, tcb_channels=width, lite=False,
                     **_model_options(options))


def refinedet_mobilenetv2(num_classes: int, width_mult: float = 1.0, tcb_channels: int = 128,
                          extra_channels: int = 512, **options) -> RefineDet:
    """RefineDet with a MobileNetV2 backbone (stride 8/16/32 expansions, an SSD-Lite extra block to stride 64),
    depthwise-separable TCBs and heads. ``options``: theta, two_step, tcb, arm (see :class:`RefineDet`; SSD's
    min_ratio / max_ratio are ignored)."""
    backbone = MobileNetV2Pyramid(width_mult)
    extra = extra_block(backbone.out_channels[-1], extra_channels, lite=True)
    return RefineDet(backbone, extra, extra_channels, num_classes, tcb_channels=tcb_channels, lite=True,
                     **_model_options(options))
