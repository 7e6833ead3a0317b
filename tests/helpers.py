"""Shared test fixtures that build small real artefacts (no training needed)."""
from __future__ import annotations

from pathlib import Path


def make_tiny_checkpoint(path: str | Path, *, model: str = "ssdlite_mobilenetv2", num_classes: int = 3,
                         img_size: int = 64, model_kwargs: dict | None = None, seed: int = 0,
                         score_threshold: float = 0.05, category_ids=None) -> Path:
    """A valid checkpoint of an untrained (randomly initialised, seeded) tiny model.

    The class-logit bias is spread so that an untrained model still emits several detections per image.
    """
    import torch

    from distill.checkpoint import save_checkpoint
    from distill.config import TrainConfig
    from distill.models import create_model

    torch.manual_seed(seed)
    kw = {"width_mult": 0.25, "min_ratio": 0.1, "max_ratio": 0.9} if model_kwargs is None else model_kwargs
    m = create_model(model, num_classes, **kw)
    with torch.no_grad():
        for layer in m.cls_head.layers:
            conv = layer[-1] if isinstance(layer, torch.nn.Sequential) else layer
            conv.weight.normal_(0, 0.3)
            conv.bias.uniform_(-1, 1)
    m.eval()
    cfg = TrainConfig(model=model, model_kwargs=kw, img_size=img_size, score_threshold=score_threshold)
    ck = {"model_name": model, "model_kwargs": kw, "num_classes": num_classes, "model": m.state_dict(),
          "class_names": [f"class{i}" for i in range(1, num_classes + 1)],
          "category_ids": list(category_ids or [1 + 2 * i for i in range(num_classes)]),
          "config": cfg.to_dict(), "nms": vars(cfg.nms()).copy(), "epoch": 0, "step": 0, "best_map": 0.0}
    save_checkpoint(path, ck)
    return Path(path)
