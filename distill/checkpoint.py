"""Checkpoints (DESIGN.md "Checkpoint"): the typed :class:`Checkpoint`, with one writer and one reader.

On disk a checkpoint is one plain dict of tensors and Python values (``torch.load(..., weights_only=True)``
reads it), built by :meth:`Checkpoint.to_dict` and written atomically by :meth:`Checkpoint.save`, so a crash
never leaves a truncated ``last.pt`` / ``best.pt``; a run keeps its last N (:func:`save_last`: ``last.pt``,
``last-prev.pt``, ...) and continues from the newest readable one (:func:`load_latest`).
:meth:`Checkpoint.load` reads a checkpoint back, and also reads
format 1, written before the config had sections: a flat config, and distillation's training state
(``kd_modules``, ``discriminators``, ``gan_state``, ``kd_optimizers``) at the top level instead of in ``extra``.

``load_checkpoint`` / ``save_checkpoint`` / ``model_from_checkpoint`` / ``meta_from_checkpoint`` are thin
wrappers for call sites that handle a checkpoint as a dict in the format-1 shape.
"""
from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.atomic import atomic_path
from runtime.metadata import ModelMeta, NMSConfig, library_versions
from runtime.sizes import as_hw

from .config import TrainConfig, flatten_config, nest_config
from .models import SSD, create_model

FORMAT_VERSION = 2
REQUIRED_KEYS = ("model_name", "model_kwargs", "num_classes", "model")


@dataclass(kw_only=True)
class Checkpoint:
    """A detector and, for a training run, everything needed to continue it exactly.

    ``model`` / ``ema``: state dicts of the inference model (EMA weights when the run kept them);
    ``optimizer`` / ``scheduler`` / ``scaler``: state dicts of the run's detector optimisation (None when
    absent); ``epoch``: the last finished epoch (0-based); ``step``: optimizer steps so far; ``rng``: see
    :func:`rng_state`; ``class_names`` / ``category_ids``: label L in 1..C is ``class_names[L - 1]``, the
    dataset's id ``category_ids[L - 1]``; ``config``: the resolved :class:`TrainConfig` as a nested dict;
    ``nms``: :class:`runtime.metadata.NMSConfig` as a dict; ``best_map``: best validation mAP in points
    (-1: never evaluated); ``elapsed_s``: training wall time so far; ``extra``: training-only parts of other
    components (distillation's adapters, discriminators, schedule state and optimizers), keyed by them.
    ``partial``: set when the run stopped inside an epoch (SIGINT / SIGTERM, distill/safety.py): that epoch
    (``epoch`` + 1), its batches done, the optimizer steps before it, the loop's and the plan's sums so far;
    None at epoch ends. ``path`` is where the checkpoint was read from; it is not written.
    """
    model_name: str
    model_kwargs: dict[str, Any]
    num_classes: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    ema: dict[str, torch.Tensor] | None = None
    epoch: int = 0
    step: int = 0
    rng: dict[str, Any] | None = None
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    nms: dict[str, Any] = field(default_factory=dict)
    best_map: float = -1.0
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    partial: dict[str, Any] | None = None
    path: str | None = None

    @classmethod
    def create(cls, cfg: TrainConfig, model: nn.Module, class_names: list[str], category_ids: list[int],
               **state: Any) -> Checkpoint:
        """The checkpoint of ``model`` trained as ``cfg``; ``state``: any other field (optimizer, epoch, ...)."""
        return cls(model_name=cfg.model.name, model_kwargs=dict(cfg.model.kwargs), num_classes=model.num_classes,
                   model=model.state_dict(), class_names=list(class_names),
                   category_ids=[int(c) for c in category_ids], config=cfg.to_dict(), nms=cfg.nms.to_dict(), **state)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "checkpoint") -> Checkpoint:
        """A checkpoint from its dict, format 1 or 2. ValueError naming ``source`` when it is not one."""
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise ValueError(f"{source} is not a checkpoint of this project (missing {', '.join(missing)})")
        version = d.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{source}: checkpoint format {version!r} is newer than this code reads "
                             f"(<= {FORMAT_VERSION}); update the code")
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        # Format 1 kept the training-only parts at the top level: they belong to ``extra`` now.
        extra = {**{k: v for k, v in d.items() if k not in names and k != "format_version"},
                 **dict(d.get("extra") or {})}
        config = nest_config(d.get("config") or {}, f"{source}: config")
        return cls(**{**known, "extra": extra, "config": config})

    def to_dict(self) -> dict[str, Any]:
        """The plain dict written to disk (format 2; ``path`` left out)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        return {"format_version": FORMAT_VERSION, **d}

    def save(self, path: str | Path) -> None:
        """Write atomically to ``path`` (folders are created)."""
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read ``path``, or a run folder's ``best.pt`` (else ``last.pt``), on the CPU."""
        path = Path(path)
        if path.is_dir():
            path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
        if not path.is_file():
            raise ValueError(f"checkpoint not found: {path}")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt / foreign files get one clear message
            raise ValueError(f"cannot read checkpoint {path}: not a checkpoint of this product "
                             f"({_unreadable_reason(e)})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} is not a checkpoint of this project (a {type(d).__name__}, not a dict)")
        ck = cls.from_dict(d, str(path))
        ck.path = str(path)
        return ck

    def train_config(self) -> TrainConfig:
        """The run's config as a :class:`TrainConfig` (keys added since take their defaults)."""
        return TrainConfig.from_dict(self.config, f"{self.path or 'checkpoint'}: config")

    def flat_config(self) -> dict[str, Any]:
        """The config as a flat dict keyed by flag name (only the keys stored)."""
        return flatten_config(self.config)

    def build_model(self, use_ema: bool = True) -> SSD:
        """The model with its weights (EMA weights when present and ``use_ema``), in eval mode on the CPU."""
        from .text.models import TEXT_MODELS, create_text_model
        model = (create_text_model(self.model_name, **self.model_kwargs) if self.model_name in TEXT_MODELS
                 else create_model(self.model_name, self.num_classes, **self.model_kwargs))
        check_finite_weights(self.ema if use_ema and self.ema else self.model, self.path or "checkpoint")
        load_weights(model, self.ema if use_ema and self.ema else self.model, self.path or "checkpoint",
                     f"the {self.model_name} {self.model_kwargs} with {self.num_classes} classes it names")
        return model.eval()

    def to_v1_dict(self) -> dict[str, Any]:
        """The format-1 dict shape: flat config, ``extra``'s parts at the top level, ``path`` included."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {"format_version": 1, **d, **self.extra, "config": self.flat_config()}


def _as_checkpoint(ckpt: Checkpoint | dict[str, Any] | str | Path) -> Checkpoint:
    if isinstance(ckpt, Checkpoint):
        return ckpt
    if isinstance(ckpt, dict):
        return Checkpoint.from_dict(ckpt, str(ckpt.get("path") or "checkpoint"))
    return Checkpoint.load(ckpt)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, target: str) -> None:
    """``model.load_state_dict(state)`` (strict); ValueError ``"<source>: its weights do not fit <target> (<the
    first mismatch>)"`` when they do not (PyTorch lists every mismatch over many lines: the first says enough)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = " ".join(str(e).splitlines()[1:2]).strip()[:300]
        raise ValueError(f"{source}: its weights do not fit {target} ({first})") from None


def _unreadable_reason(e: Exception) -> str:
    """What ``torch.load(weights_only=True)``'s error says about a file, without PyTorch's advice to load it
    unsafely."""
    text = " ".join(str(e).split())
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split(" Please use")[0].split(" Check the doc")[0]
        if "Unsupported global" in detail:
            return f"it holds Python objects, which are never loaded: {detail.strip()}"
        return f"its content is not what torch.save writes: {detail.strip()}"
    if isinstance(e, EOFError) or not text:
        return "the file is empty or ends early"
    if "zip archive" in text:
        return f"the file is truncated or corrupt: {text.split('. ')[0]}"
    return f"{type(e).__name__}: {text[:200]}"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """:meth:`Checkpoint.load` as a format-1 shaped dict (flat ``config``, distillation parts at the top level)."""
    return Checkpoint.load(path).to_v1_dict()


def save_checkpoint(path: str | Path, ckpt: Checkpoint | dict[str, Any]) -> None:
    """:meth:`Checkpoint.save` of a checkpoint or of its dict (format 1 or 2)."""
    _as_checkpoint(ckpt).save(path)


def model_from_checkpoint(ckpt: Checkpoint | dict[str, Any] | str | Path, use_ema: bool = True) -> SSD:
    """Rebuild the model of a checkpoint (object, dict or path; EMA weights when present), in eval mode on CPU."""
    return _as_checkpoint(ckpt).build_model(use_ema)


def meta_from_checkpoint(ckpt: Checkpoint | dict[str, Any]) -> ModelMeta:
    """The runtime's ModelMeta (sidecar schema) for a checkpoint: everything a deployed model needs."""
    ck = _as_checkpoint(ckpt)
    data = ck.config.get("data") or {}
    if not all(k in data for k in ("img_size", "mean", "std")):
        raise ValueError(f"{ck.path or 'checkpoint'} has no training config (config.data: img_size, mean, std): "
                         f"its input size and normalisation are unknown; expected a checkpoint written by training")
    return ModelMeta(model_name=ck.model_name, class_names=list(ck.class_names),
                     category_ids=[int(c) for c in ck.category_ids], input_size=as_hw(data["img_size"]),
                     mean=tuple(data["mean"]), std=tuple(data["std"]),
                     resize_mode=data.get("resize_mode", "stretch"),  # runs before --resize existed stretched
                     nms=NMSConfig(**ck.nms), graph="checkpoint", precision="fp32", onnx_sha256=None,
                     nms_plugin=None, versions=library_versions(), extra={"checkpoint": ck.path})


# ----------------------------------------------------------------------------------------------- last-N chain
def chain_names(keep: int) -> list[str]:
    """The file names of a run's last ``keep`` checkpoints, newest first: last.pt, last-prev.pt, last-prev2.pt, ..."""
    return ["last.pt", "last-prev.pt", *(f"last-prev{i}.pt" for i in range(2, keep))][:max(1, keep)]


def last_checkpoints(folder: str | Path) -> list[Path]:
    """The last-N checkpoints present in a run folder, newest first (last.pt, last-prev.pt, last-prev2.pt, ...)."""
    folder = Path(folder)
    numbered = sorted((int(m.group(1) or 1), p) for p in folder.glob("last-prev*.pt")
                      if (m := re.fullmatch(r"last-prev(\d*)\.pt", p.name)) and p.is_file())
    return ([folder / "last.pt"] if (folder / "last.pt").is_file() else []) + [p for _, p in numbered]


def save_last(ck: Checkpoint, folder: str | Path, keep: int = 2) -> Path:
    """Write ``ck`` as ``folder/last.pt`` and keep the ``keep`` - 1 previous ones (last-prev.pt, last-prev2.pt, ...).

    The new file is written completely (temporary file, fsync) before anything is renamed, so a failing write
    (full disk, read-only folder) changes nothing; the previous last.pt is then kept under a temporary name
    (a hard link, or a copy where links are not supported), the new file renamed over last.pt, and the older
    ones shifted down the chain. At every moment last.pt is a complete checkpoint.
    """
    folder, names = Path(folder), chain_names(keep)
    target, staged = folder / names[0], None
    try:
        with atomic_path(target) as tmp:
            torch.save(ck.to_dict(), tmp)
            if len(names) > 1 and target.is_file():
                staged = target.with_name(f".{Path(names[1]).stem}.{secrets.token_hex(4)}.tmp.pt")
                try:
                    os.link(target, staged)
                except OSError:
                    shutil.copyfile(target, staged)
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    if staged is not None:
        for older, newer in zip(reversed(names[1:]), reversed(names[:-1])):
            if newer != names[0] and (folder / newer).is_file():
                os.replace(folder / newer, folder / older)
        os.replace(staged, folder / names[1])
    for stale in last_checkpoints(folder)[len(names):]:
        stale.unlink(missing_ok=True)
    return target


def load_latest(folder: str | Path) -> Checkpoint:
    """The newest readable checkpoint of a run folder's last-N chain. A truncated or unreadable newer one is
    passed over with one line on stderr naming it; ValueError when none is readable."""
    paths = last_checkpoints(folder)
    if not paths:
        raise ValueError(f"{folder}: no last.pt (nor last-prev*.pt) to continue from")
    errors: list[str] = []
    for path in paths:
        try:
            ck = Checkpoint.load(path)
        except ValueError as e:
            errors.append(str(e))
            continue
        if path.name != "last.pt":
            where = (f"epoch {ck.epoch + 2} batch {ck.partial['batches']}" if ck.partial
                     else f"end of epoch {ck.epoch + 1}")
            why = f"is unreadable ({errors[0]})" if errors else "is missing"
            print(f"{Path(folder) / 'last.pt'} {why}: continuing from {path.name} ({where})", file=sys.stderr)
        return ck
    raise ValueError(f"{folder}: no readable checkpoint ({'; '.join(errors)})")


def set_aside_unreadable(folder: str | Path, resumed: str | Path) -> list[Path]:
    """Rename the last-N checkpoints newer than ``resumed`` that cannot be read to NAME.unreadable (kept for a
    look, out of the chain, so the next save does not push the good one out); returns the new paths."""
    moved = []
    for path in last_checkpoints(folder):
        if path.resolve() == Path(resumed).resolve():
            break
        try:
            Checkpoint.load(path)
        except ValueError:
            moved.append(path.with_name(path.name + ".unreadable"))
            os.replace(path, moved[-1])
    return moved


def rng_state() -> dict[str, Any]:
    """The torch, Python, numpy (and CUDA) random states as checkpoint-safe values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite_weights(state: dict[str, Any], source: str = "checkpoint") -> None:
    """ValueError naming the first tensor of ``state`` (a state dict: name -> tensor) that holds NaN or
    Inf values, and how many: the weights of a run that diverged must not be exported or run.
    Non-float tensors (counters, int buffers) are skipped."""
    for name, t in state.items():
        if not torch.is_tensor(t) or not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        what = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
        raise ValueError(f"{source}: tensor {name!r} has {what} values: the run diverged; use an earlier checkpoint")
