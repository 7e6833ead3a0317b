"""SSD and SSD-Lite detectors over a two-map backbone (stride 16 and stride 32).

Six feature maps: the backbone's two, then four extra blocks that halve the resolution each
(at 300 px: 19, 10, 5, 3, 2, 1; at 160 px: 10, 5, 3, 2, 1, 1). Teachers and students built here
share this geometry, so their feature maps line up one to one for distillation.

In both training and eval, ``forward`` returns the raw heads:
    loc  float32 [B, N, 4]     box regression (SSD encoding with variances, see box_coder.py)
    conf float32 [B, N, C + 1] class logits, column 0 = background
``forward_features`` also returns the six feature maps the heads read. Postprocessing lives in
distill/postprocess.py.

With a kept super-resolution generator (model kwarg ``sr_generator``, :meth:`SSD.add_sr_generator`), the heads
read G(z) instead of z on the generator's maps, in training and at inference (so every export has G);
``forward_features`` then returns those post-G maps and :meth:`SSD.base_features` the maps before G.
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.sizes import as_hw

from .anchors import DefaultBoxGenerator
from .box_coder import BoxCoder
from .layers import conv_bn_act, separable_conv
from .sr_generator import SRGenerator, sr_generator_spec


def extra_block(cin: int, cout: int, lite: bool) -> nn.Sequential:
    """1x1 reduce to cout/2, then a stride-2 3x3 (depthwise-separable in SSD-Lite)."""
    mid = max(cout // 2, 8)
    if lite:
        act = nn.ReLU6
        return nn.Sequential(conv_bn_act(cin, mid, 1, act=act), conv_bn_act(mid, mid, 3, 2, groups=mid, act=act),
                             conv_bn_act(mid, cout, 1, act=act))
    return nn.Sequential(conv_bn_act(cin, mid, 1), conv_bn_act(mid, cout, 3, 2))


class Head(nn.Module):
    """One prediction layer per feature map; outputs flattened in (map, y, x, anchor) order."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], out_per_anchor: int, lite: bool):
        super().__init__()
        self.out_per_anchor = out_per_anchor
        layers = []
        for c, a in zip(in_channels, num_anchors):
            if lite:
                layers.append(nn.Sequential(conv_bn_act(c, c, 3, groups=c, act=nn.ReLU6),
                                            nn.Conv2d(c, a * out_per_anchor, 1)))
            else:
                layers.append(nn.Conv2d(c, a * out_per_anchor, 3, padding=1))
        self.layers = nn.ModuleList(layers)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for f, layer in zip(feats, self.layers):
            y = layer(f)                                    # [B, A*K, H, W]
            b, _, h, w = y.shape
            outs.append(y.view(b, -1, self.out_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, self.out_per_anchor))
        return torch.cat(outs, 1)


class SSD(nn.Module):
    """Args:
        backbone: module returning [stride-16 map, stride-32 map], with ``out_channels`` (2 ints).
        num_classes: object classes C (background excluded).
        extra_channels: channels of the four extra maps.
        lite: SSD-Lite (depthwise-separable heads and extras) or classic SSD (3x3 heads).
        anchor_generator: DefaultBoxGenerator; its ratios define anchors per location.
        variances: box coder variances.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, extra_channels=(512, 256, 256, 128), lite: bool = True,
                 anchor_generator: DefaultBoxGenerator | None = None, variances=(0.1, 0.1, 0.2, 0.2)):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, background excluded), got {num_classes}")
        self.num_classes = num_classes
        self.backbone = backbone
        chans = list(backbone.out_channels)
        extras = []
        for c in extra_channels:
            extras.append(extra_block(chans[-1], c, lite))
            chans.append(c)
        self.extras = nn.ModuleList(extras)
        self.feature_channels = chans
        self.anchor_generator = anchor_generator or DefaultBoxGenerator()
        na = self.anchor_generator.num_anchors_per_location()
        if len(na) != len(chans):
            raise ValueError(f"anchor generator has {len(na)} maps, the network {len(chans)}")
        self.loc_head = Head(chans, na, 4, lite)
        self.cls_head = Head(chans, na, num_classes + 1, lite)
        self.box_coder = BoxCoder(variances)
        self.sr_generator: nn.ModuleDict | None = None        # see add_sr_generator (absent from the state dict)
        self.sr_maps: list[int] = []
        self._init_heads()

    def _init_heads(self):
        for m in list(self.loc_head.modules()) + list(self.cls_head.modules()) + list(self.extras.modules()):
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def add_sr_generator(self, maps: list[int], width: int = 32, blocks: int = 2) -> None:
        """Keep a super-resolution generator G (distill/models/sr_generator.py) on the feature maps ``maps``:
        from now on the heads read G(z_k) instead of z_k there. G starts as the identity, so the outputs do not
        change until G is trained. Its weights are in the state dict as ``sr_generator.<k>.*``."""
        maps, width, blocks = sr_generator_spec({"maps": list(maps), "width": width, "blocks": blocks},
                                                len(self.feature_channels))
        self.sr_maps = maps
        self.sr_generator = nn.ModuleDict({str(k): SRGenerator(self.feature_channels[k], width, blocks)
                                           for k in maps})

    def base_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x float32 [B, 3, H, W] normalised -> the six maps of the backbone and the extra blocks, before any
        kept generator: list of float32 [B, C_k, H_k, W_k] (the extra blocks read these)."""
        feats = list(self.backbone(x))
        for block in self.extras:
            feats.append(block(feats[-1]))
        return feats

    def forward_features(self, x: torch.Tensor):
        """x float32 [B, 3, H, W] normalised -> (loc [B,N,4], conf [B,N,C+1], feats: list of 6 [B,C_k,H_k,W_k]).

        ``feats`` are the maps the heads read: :meth:`base_features`, with G(z_k) in place of z_k on the maps of
        a kept generator (:meth:`add_sr_generator`)."""
        feats = self.base_features(x)
        if self.sr_generator is not None:
            feats = [self.sr_generator[str(k)](f) if k in self.sr_maps else f for k, f in enumerate(feats)]
        return self.loc_head(feats), self.cls_head(feats), feats

    def forward(self, x: torch.Tensor):
        loc, conf, _ = self.forward_features(x)
        return loc, conf

    @torch.no_grad()
    def feature_sizes(self, img_size: int | tuple[int, int]) -> list[tuple[int, int]]:
        h, w = as_hw(img_size)
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            feats = self.forward_features(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))[2]
        finally:
            self.train(was_training)
        return [tuple(f.shape[-2:]) for f in feats]

    def anchors(self, img_size: int | tuple[int, int]) -> torch.Tensor:
        """float32 [N, 4] normalised cxcywh anchors for a square (or (H, W)) input, cached per size."""
        key = as_hw(img_size)
        cache = self.__dict__.setdefault("_feature_size_cache", {})
        if key not in cache:
            cache[key] = self.feature_sizes(img_size)
        return self.anchor_generator(cache[key])
