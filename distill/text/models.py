"""Teacher and student of the text / non-text image classifier (region-level, multi-scale).

Both take float32 ``[B, 3, H, W]`` of any H, W (>= 32 px) and return a dict:

* ``region_logits``: ``{g: float32 [B, g, g]}`` for each grid g (default 3 and 5), one text logit per
  region, row-major (row top to bottom);
* ``region_features``: ``{g: float32 [B, g*g, D]}``, the region features linearly mapped into the space
  shared by teacher and student (D = ``feature_dim``, 128: the paper does not give it), before ReLU:
  the distillation losses (activation boundary, adversarial) read these;
* ``image_logit``: float32 ``[B]``, the image-level prediction as the logical OR of the regions, i.e. the
  max of all region logits (sigmoid is monotone, so this is the logit of the max region probability).

Head, shared by both: mapped = Linear(C -> D) (per grid when the grids read different layers), then
ReLU and Linear(D -> 1) for the region logit ("two-layer fully-connected network").
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import vgg16

from distill.text.regions import GRIDS

FEATURE_DIM = 128
STUDENT_CHANNELS: tuple[int, ...] = (16, 24, 32, 48, 48, 64)
STUDENT_STRIDES: tuple[int, ...] = (2, 2, 2, 2, 1, 1)


def _pool_matrix(n: int, grid: int, like: torch.Tensor) -> torch.Tensor:
    """float [grid, n]: row i averages cells floor(i n / grid) .. ceil((i + 1) n / grid) - 1, the bins of
    adaptive average pooling."""
    i = torch.arange(grid, device=like.device)
    start, end = (i * n) // grid, ((i + 1) * n + grid - 1) // grid
    j = torch.arange(n, device=like.device)
    m = ((j[None] >= start[:, None]) & (j[None] < end[:, None])).to(like.dtype)
    return m / m.sum(dim=1, keepdim=True)


def region_pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, grid*grid, C] (row-major regions); equals adaptive_avg_pool2d(x, grid) but is
    written as two matrix products so that it exports to ONNX for any h, w (the ONNX exporter refuses
    adaptive pooling whose output size does not divide the input size)."""
    ph, pw = _pool_matrix(x.shape[2], grid, x), _pool_matrix(x.shape[3], grid, x)
    return torch.einsum("gh,bchw,kw->bgkc", ph, x, pw).flatten(1, 2)


class RegionHead(nn.Module):
    """Region features [B, M, C] -> (mapped [B, M, D], logits [B, M])."""

    def __init__(self, in_channels: int, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.map = nn.Linear(in_channels, feature_dim)
        self.cls = nn.Linear(feature_dim, 1)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mapped = self.map(feats)
        return mapped, self.cls(torch.relu(mapped)).squeeze(-1)


def _outputs(feats: dict[int, torch.Tensor], heads: dict[int, RegionHead]) -> dict[str, object]:
    """Per-grid region features [B, g*g, C] -> the output dict described in the module docstring."""
    logits, mapped = {}, {}
    for g, f in feats.items():
        mapped[g], flat = heads[g](f)
        logits[g] = flat.reshape(-1, g, g)
    image = torch.cat([v.flatten(1) for v in logits.values()], dim=1).amax(dim=1)
    return {"region_logits": logits, "region_features": mapped, "image_logit": image}


class TextTeacher(nn.Module):
    """VGG-16 feature extractor; conv4_3 and conv5_3 maps (512 channels each, after ReLU) are each pooled to
    every grid and added per grid (multi-scale region features), then one shared RegionHead.

    ``batch_norm=True`` (default): VGG-16 with BatchNorm after every convolution (torchvision's vgg16_bn
    layout). The paper's teacher is the plain VGG-16 started from ImageNet weights; none are shipped, and
    trained from scratch the plain network stayed at the label prior (F = 0 after 2 and 3 epochs at lr 1e-4
    and 5e-4, 400 images) where the normalised one learned (F 37 after 3 epochs). ``batch_norm=False``
    is the paper's layout, for a user who starts it from their own weights."""

    def __init__(self, grids: tuple[int, ...] = GRIDS, feature_dim: int = FEATURE_DIM,
                 batch_norm: bool = True) -> None:
        super().__init__()
        if batch_norm:
            from torchvision.models import vgg16_bn
            features = vgg16_bn(weights=None).features
            self.stage4, self.stage5 = features[:33], features[33:43]     # the same two maps, BN before ReLU
        else:
            features = vgg16(weights=None).features
            self.stage4 = features[:23]        # through conv4_3 + ReLU, stride 8
            self.stage5 = features[23:30]      # pool4, conv5_1..conv5_3 + ReLU, stride 16
        self.grids = tuple(grids)
        self.head = RegionHead(512, feature_dim)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        c4 = self.stage4(x)
        c5 = self.stage5(c4)
        feats = {g: region_pool(c4, g) + region_pool(c5, g) for g in self.grids}
        return _outputs(feats, {g: self.head for g in self.grids})


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TextStudent(nn.Module):
    """Six 3x3 conv + BatchNorm + ReLU layers (no feature fusion). Layer 5's normalised output gives the
    regions of the finest grid, layer 6's those of the coarsest (grids sorted, finest first: 5 then 3);
    one RegionHead per grid maps each into the shared space. About 0.088 M parameters by default."""

    def __init__(self, grids: tuple[int, ...] = GRIDS, feature_dim: int = FEATURE_DIM,
                 channels: tuple[int, ...] = STUDENT_CHANNELS,
                 strides: tuple[int, ...] = STUDENT_STRIDES) -> None:
        super().__init__()
        if len(channels) != 6 or len(strides) != 6 or len(grids) != 2:
            raise ValueError(f"student needs 6 channels, 6 strides and 2 grids, got {channels}, {strides}, {grids}")
        cins = (3, *channels[:-1])
        self.layers = nn.ModuleList(_conv_bn(i, o, s) for i, o, s in zip(cins, channels, strides))
        self.grids = tuple(sorted(grids, reverse=True))     # (5, 3): layer 5 -> 5x5, layer 6 -> 3x3
        self.heads = nn.ModuleDict({str(g): RegionHead(c, feature_dim)
                                    for g, c in zip(self.grids, channels[-2:])})

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        for layer in self.layers[:5]:
            x = layer(x)
        c5 = x
        c6 = self.layers[5](c5)
        fine, coarse = self.grids
        feats = {coarse: region_pool(c6, coarse), fine: region_pool(c5, fine)}
        return _outputs(feats, {g: self.heads[str(g)] for g in self.grids})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def region_bce(out: dict[str, object], targets: dict[int, torch.Tensor]) -> torch.Tensor:
    """Mean binary cross-entropy over all M regions of all grids (hard or soft targets {g: [B, g, g]})."""
    logits = torch.cat([out["region_logits"][g].flatten(1) for g in targets], dim=1)
    target = torch.cat([targets[g].flatten(1) for g in targets], dim=1).to(logits.dtype)
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


TEXT_MODELS: dict[str, type[nn.Module]] = {"textnet_teacher": TextTeacher, "textnet_student": TextStudent}


def create_text_model(name: str, **kwargs) -> nn.Module:
    """The text / non-text classifier named ``name`` (``textnet_teacher`` or ``textnet_student``); kwargs go to
    its constructor (tuples may arrive as lists from a checkpoint's JSON-like config)."""
    if name not in TEXT_MODELS:
        from runtime.errors import unknown_name_error
        raise unknown_name_error("text model", name, TEXT_MODELS)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items() if v is not None}
    return TEXT_MODELS[name](**kw)
