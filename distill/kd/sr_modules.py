"""Feature super-resolution distillation (papers/small-object-generative-discriminative.txt), the parts.

Small objects live on the two highest-resolution maps. For map k of the student (z_LR, [B, Cs_k, H, W]):

* z_HR -- the same image's map k at TWICE the input resolution: the frozen teacher (or, as in SOD-MTGAN /
  Perceptual GAN, the student itself, no gradient) run on a bilinearly upsampled copy of the batch, then
  area-resized to [H, W] (:class:`HighResolution`);
* G -- a light generator per map (:class:`SRGenerator`): residual blocks and a sub-pixel convolution branch
  (conv to 4x the channels, PixelShuffle(2) to [2H, 2W], a stride-2 conv back to [H, W]), added to z_LR, so
  G starts as the identity. G(z_LR) stays in the student's channel space, so the student's own
  regression head can read it (L_reg). G lives in the model layer (distill/models/sr_generator.py): it is
  training-only, or kept in the student (``--sr-keep-g``) and exported with it;
* D -- one discriminator (:class:`SRDiscriminator`) for both maps (a 1x1 stem per map into a shared trunk)
  with two heads: real (z_HR) vs generated, one logit per image, and object / no object per location (D_cls).

The loss functions below are the slides' terms (each returns a scalar; B = m, the batch):

    L_adv = 1/m sum_i log(1 - D(G(z_LR_i)))
    L_MSE = 1/m sum_i ||z_HR_i - G(z_LR_i)||_2^2                      (per element: / (C H W), see sr_mse)
    L_TV  = 1/(r_W r_H) sum_{x,y} ||grad G(z_LR)_{x,y}||              (per channel: / sqrt(C), see sr_tv)
    L_cls = 1/m sum_i -log(p_i p*_i + (1 - p_i)(1 - p*_i)) on G(z_LR) and on z_HR      (see sr_cls)
    L_reg = 1/m sum_i sum_{j in x,y,w,h} [u_i >= 1] smoothL1(t_SR_ij - t*_ij)          (see sr_reg)
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.sr_generator import ResidualBlock, SRGenerator  # noqa: F401 - re-exported: the kd side's names
from .losses import box_masks

EPS = 1e-6


# ----------------------------------------------------------------------------------------------- networks
class SRDiscriminator(nn.Module):
    """One discriminator for several maps: ``forward(x, k)`` with x float32 [B, C_k, H, W] (map k, in the
    comparison space) -> (real/generated logit [B], object logit per location [B, H, W]).

    1x1 stem per map (C_k -> width), two shared 3x3 convs (stride 1, so the location grid is kept); the
    adversarial head is a stride-2 3x3 conv, global average pooling and a linear layer, the classification
    head a 1x1 conv."""

    def __init__(self, channels: list[int], width: int = 64, negative_slope: float = 0.2):
        super().__init__()
        act = lambda: nn.LeakyReLU(negative_slope, inplace=True)        # noqa: E731
        self.stems = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1), act()) for c in channels)
        self.trunk = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), act(),
                                   nn.Conv2d(width, width, 3, padding=1), act())
        self.adv = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), act(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1))
        self.cls = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.stems[k](x))
        return self.adv(h).squeeze(1), self.cls(h).squeeze(1)


class HighResolution:
    """z_HR: ``model``'s maps ``maps`` on the batch upsampled ``scale`` x (bilinear), area-resized to ``sizes``.

    The pass runs under ``torch.no_grad()`` (the maps have ``requires_grad`` False). ``model`` is the
    frozen teacher (eval mode, no trainable parameters) or the student; ``context`` (optional) wraps the
    pass, e.g. to keep the student's BatchNorm running statistics untouched. The maps are the model's
    ``base_features`` where it has them (SSD: before a kept generator G), else ``forward_features``'."""

    def __init__(self, model: nn.Module, maps: list[int], scale: float = 2.0, context=None):
        self.model, self.maps, self.scale, self.context = model, list(maps), float(scale), context

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """images float32 [B, 3, H, W] -> per map in ``maps`` float32 [B, C_k, h_k, w_k] (``sizes``)."""
        big = F.interpolate(images, scale_factor=self.scale, mode="bilinear", align_corners=False)
        run = getattr(self.model, "base_features", None) or (lambda x: self.model.forward_features(x)[2])
        with self.context(self.model) if self.context is not None else contextlib.nullcontext():
            feats = run(big)
        return [F.adaptive_avg_pool2d(feats[k], size) for k, size in zip(self.maps, sizes)]


# ----------------------------------------------------------------------------------------------- losses
def sr_adv(gen_logits: torch.Tensor) -> torch.Tensor:
    """L_adv = 1/m sum_i log(1 - D(G(z_LR_i))), D = sigmoid of the logits [B]; log(1 - sigmoid(l)) = -softplus(l).
    The generator minimises it (the slides' saturating form)."""
    return -F.softplus(gen_logits.float()).mean()


def sr_d_adv(real_logits: torch.Tensor, gen_logits: torch.Tensor) -> torch.Tensor:
    """D's side of max_D 1/m sum_i log D(z_HR_i) + log(1 - D(G(z_LR_i))), as a loss to minimise."""
    return (F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits.float()))
            + F.binary_cross_entropy_with_logits(gen_logits.float(), torch.zeros_like(gen_logits.float())))


def sr_mse(hr: torch.Tensor, gen: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_MSE = 1/m sum_i ||z_HR_i - G(z_LR_i)||_2^2 / (C H W): the squared norm per image divided by its number of
    elements (SRGAN's pixel-wise MSE), so the term's scale does not grow with the map's width and size.
    ``mask`` float [B, 1, H, W] in {0, 1} (``--sr-region small``): the mean over the masked cells' elements of
    the whole batch instead (0, still attached to the graph, when no cell is masked)."""
    d = (hr.float() - gen.float()).pow(2)
    if mask is None:
        return d.flatten(1).sum(1).div(d[0].numel()).mean()
    return _masked_mean(d.sum(1, keepdim=True) / d.shape[1], mask)


def sr_tv(gen: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_TV = 1/(r_W r_H) sum_{x,y} ||grad G_{x,y}||: forward differences (0 past the last row / column), the
    L2 norm over both directions and all C channels divided by sqrt(C), averaged over the H W locations and
    the batch (over the masked locations with ``mask``, as :func:`sr_mse`)."""
    g = gen.float()
    dx = F.pad(g[..., :, 1:] - g[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(g[..., 1:, :] - g[..., :-1, :], (0, 0, 0, 1))
    norm = (dx.pow(2) + dy.pow(2)).sum(1, keepdim=True).add(EPS * EPS).sqrt()   # [B, 1, H, W]
    if mask is None:
        return norm.mean() / math.sqrt(g.shape[1])
    return _masked_mean(norm, mask) / math.sqrt(g.shape[1])


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` [B, 1, H, W] over the cells where ``mask`` is 1; 0 (attached to the graph) when none is."""
    n = mask.sum()
    if not bool(n > 0):
        return x.sum() * 0.0
    return (x * mask).sum() / n


def small_box_masks(targets: list[dict], sizes: list[tuple[int, int]], img_hw: tuple[int, int], small: float,
                    device) -> list[torch.Tensor]:
    """[B, 1, H, W] per map size: 1 on the cells whose centre lies inside a ground-truth box of side
    sqrt(w h) below ``small`` px at the input size ``img_hw`` (boxes normalised xyxy, as box_masks reads them)."""
    kept = []
    for t in targets:
        b = t["boxes"].float().view(-1, 4)
        kept.append({"boxes": b[box_side(b, img_hw) < small]})
    return box_masks(kept, sizes, device)


def box_side(boxes: torch.Tensor, img_hw: tuple[int, int]) -> torch.Tensor:
    """sqrt(w h) in pixels of normalised xyxy boxes [..., 4] at the input size ``img_hw`` (COCO's size measure)."""
    h_img, w_img = img_hw
    return ((boxes[..., 2] - boxes[..., 0]).clamp_min(0) * w_img
            * (boxes[..., 3] - boxes[..., 1]).clamp_min(0) * h_img).sqrt()


def sr_cls_likelihood(logits: torch.Tensor, p_star: torch.Tensor) -> torch.Tensor:
    """1/m sum_i -log(p_i p*_i + (1 - p_i)(1 - p*_i)) over the locations i, p = sigmoid(logits) [B, H, W], p* in
    [0, 1] [B, H, W] (the slides' expression; with p* in {0, 1} it is the binary cross-entropy)."""
    p = torch.sigmoid(logits.float())
    q = p * p_star + (1 - p) * (1 - p_star)
    return -q.clamp_min(EPS).log().mean()


def sr_cls(gen_logits: torch.Tensor, hr_logits: torch.Tensor, p_star: torch.Tensor) -> torch.Tensor:
    """L_cls: D_cls must find the objects (p*) both on G(z_LR) and on z_HR (SOD-MTGAN's classification loss,
    whose two parts the slides write out): the sum of :func:`sr_cls_likelihood` on the two."""
    return sr_cls_likelihood(gen_logits, p_star) + sr_cls_likelihood(hr_logits, p_star)


def sr_reg(t_sr: torch.Tensor, t_star: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_reg = 1/m sum_i sum_{j in x,y,w,h} [u_i >= 1] smoothL1(t_SR_ij - t*_ij): t_SR / t* float32 [B, N, 4]
    (encoded offsets), ``mask`` bool [B, N] the anchors counted ([u_i >= 1] and matched to a small object);
    m = their number (0 anchors: 0, still attached to the graph)."""
    if not bool(mask.any()):
        return t_sr.sum() * 0.0
    return F.smooth_l1_loss(t_sr[mask].float(), t_star[mask].float(), reduction="sum") / mask.sum()


# ----------------------------------------------------------------------------------------------- helpers
def anchors_per_location(model: nn.Module) -> list[int]:
    """Anchors per location of each map, read off the model's class head (SSD ``cls_head`` or RefineDet
    ``odm_conf``: a distill.models.ssd.Head)."""
    head = getattr(model, "cls_head", None) or getattr(model, "odm_conf")
    out = []
    for layer in head.layers:
        conv = [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1]
        out.append(conv.out_channels // head.out_per_anchor)
    return out


def map_slices(sizes: list[tuple[int, int]], per_location: list[int]) -> list[slice]:
    """The anchor index range of each map in the (map, y, x, anchor) order of the heads."""
    out, start = [], 0
    for (h, w), a in zip(sizes, per_location):
        out.append(slice(start, start + h * w * a))
        start += h * w * a
    return out


def object_probability(logits: torch.Tensor, sizes: list[tuple[int, int]], per_location: list[int],
                       maps: list[int]) -> list[torch.Tensor]:
    """p* per location from class logits [B, N, C + 1] (column 0 background): max over the location's anchors
    of 1 - softmax(logits)[0], for each map in ``maps`` -> float32 [B, H_k, W_k]."""
    obj = 1 - torch.softmax(logits.float(), -1)[..., 0]                       # [B, N]
    slices = map_slices(sizes, per_location)
    return [obj[:, slices[k]].reshape(obj.shape[0], *sizes[k], per_location[k]).amax(-1) for k in maps]


def conv_cost(module: nn.Module, inputs: list[torch.Tensor], call) -> tuple[int, int]:
    """(parameters, multiply-accumulates per image) of ``module`` when ``call(inputs)`` runs it (convs and
    linear layers counted; activations and additions are not)."""
    macs = [0]

    def hook(m, _inp, out):
        if isinstance(m, nn.Conv2d):
            macs[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs[0] += m.in_features * m.out_features
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            call(inputs)
    finally:
        for h in handles:
            h.remove()
    return sum(p.numel() for p in module.parameters()), macs[0]
