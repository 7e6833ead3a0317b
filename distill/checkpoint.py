"""Checkpoints (DESIGN.md "Checkpoint"): one dict of tensors and plain Python values, loadable with
``torch.load(..., weights_only=True)``; written atomically (temp file + rename) so a crash never
leaves a truncated ``last.pt`` / ``best.pt``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .models import SSD, create_model

FORMAT_VERSION = 1


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **ckpt}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt / foreign files get one clear message
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    missing = [k for k in ("model_name", "model_kwargs", "num_classes", "model") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of this project (missing {', '.join(missing)})")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict | str | Path, use_ema: bool = True) -> SSD:
    """Rebuild the model of a checkpoint (EMA weights when present), in eval mode on CPU."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = create_model(ckpt["model_name"], ckpt["num_classes"], **ckpt["model_kwargs"])
    state = ckpt.get("ema") if use_ema and ckpt.get("ema") else ckpt["model"]
    model.load_state_dict(state)
    return model.eval()


def meta_from_checkpoint(ckpt: dict):
    """The runtime's ModelMeta (sidecar schema) for a checkpoint: everything a deployed model needs."""
    from runtime.metadata import ModelMeta, NMSConfig, library_versions
    cfg = ckpt["config"]
    return ModelMeta(model_name=ckpt["model_name"], class_names=list(ckpt["class_names"]),
                     category_ids=[int(c) for c in ckpt["category_ids"]], input_size=(cfg["img_size"], cfg["img_size"]),
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), resize_mode="stretch",
                     nms=NMSConfig(**ckpt["nms"]), graph="checkpoint", precision="fp32", onnx_sha256=None,
                     nms_plugin=None, versions=library_versions(), extra={"checkpoint": ckpt.get("path")})
