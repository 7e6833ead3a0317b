"""The training loop as two plain functions, ``train_one_epoch`` and ``evaluate`` (torchvision style).

``train_one_epoch`` is the one loop of every run: it takes a ``step(images, targets)`` -- :class:`DetectorStep`
for the plain detector, the distillation session's step for ``--kd`` runs -- and an optional
``before_batch`` hook where the GAN-KD schedule interleaves its discriminator stages.
``evaluate`` preprocesses with ``runtime.preprocess`` -- the exact pixels a deployed model sees, with the
run's resize mode (stretch or letterbox) -- and scores with ``runtime.metrics.CocoEvaluator``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from runtime.evaluation import eval_subset, inference_on_dataset
from runtime.metrics import CocoEvaluator
from runtime.preprocess import preprocess_batch, scale_boxes
from runtime.sizes import as_hw

from . import distributed
from .postprocess import postprocess


class DetectorStep:
    """One optimisation step of the plain detector objective; the ``step`` of :func:`train_one_epoch`.

    ``loss_fn(model, images, targets) -> dict[str, Tensor]`` of weighted, named terms; the step sums them,
    applies the run's non-finite policy (``guard``: distill/stability.py), back-propagates (with AMP's
    scaler on CUDA), clips, steps the optimizer and the per-iteration LR scheduler, and updates the EMA.
    Returns the logged numbers, or None when the step was skipped.
    """

    def __init__(self, model, loss_fn: Callable, optimizer, scheduler, guard, *, scaler=None,
                 clip_grad: float | None = None, ema=None):
        self.model, self.loss_fn, self.optimizer, self.scheduler, self.guard = model, loss_fn, optimizer, scheduler, guard
        self.scaler, self.clip_grad, self.ema = scaler, clip_grad, ema
        self.epoch, self.n = 0, 0

    def __call__(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float] | None:
        with torch.autocast(device_type=images.device.type, enabled=self.scaler is not None):
            losses = self.loss_fn(self.model, images, targets)
        self.n += 1
        if not self.guard.finite(losses, self.epoch, self.n, "detection"):
            return None
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        out = {k: v.item() for k, v in losses.items()}
        out["total"] = total.item()
        return out


@dataclass
class EpochProgress:
    """Where the loop is in an epoch: ``batches`` done, per-key ``sums`` / ``counts`` of the logged numbers, and
    ``stop(epoch, batches) -> signal number | None``, asked after every batch (distill/safety.py)."""
    batches: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    stop: Callable[[int, int], int | None] | None = None

    def state_dict(self) -> dict:
        return {"batches": self.batches, "sums": dict(self.sums), "counts": dict(self.counts)}

    @classmethod
    def from_state(cls, state: dict) -> EpochProgress:
        return cls(int(state["batches"]), dict(state["sums"]), dict(state["counts"]))


class EpochInterrupted(Exception):
    """The loop stopped on a signal after ``progress.batches`` batches of the epoch (a batch boundary)."""

    def __init__(self, signum: int, progress: EpochProgress):
        super().__init__(f"signal {signum} after batch {progress.batches}")
        self.signum, self.progress = signum, progress


def train_one_epoch(loader, step: Callable, device, epoch: int, *, model, before_batch: Callable | None = None,
                    desc: str = "train", progress: EpochProgress | None = None) -> dict:
    """The one training loop: for every batch, ``before_batch()`` (a distillation schedule runs its
    discriminator stages there), then ``step(images, targets) -> dict | None`` (one optimisation step that
    returns its logged numbers, None when skipped). Returns the mean of every logged number over the steps
    that logged it.

    ``progress``: the epoch so far (a resumed epoch starts from its sums; ``loader`` then leaves out the
    batches done) and the stop request asked after every batch: :class:`EpochInterrupted` when it answers."""
    model.train()
    progress = progress if progress is not None else EpochProgress()
    sums, counts = progress.sums, progress.counts
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for images, targets in bar:
        if before_batch is not None:
            before_batch()
        logged = step(images.to(device, non_blocking=True), targets)
        for k, v in (logged or {}).items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
        progress.batches += 1
        bar.set_postfix({k: f"{sums[k] / counts[k]:.3f}" for k in list(sums)[:8]})
        signum = progress.stop(epoch, progress.batches) if progress.stop is not None else None
        if signum:
            bar.close()
            raise EpochInterrupted(signum, progress)
    return {k: v / counts[k] for k, v in sums.items()}


@torch.no_grad()
def predict(model, images: list, device, *, img_size: int | Sequence[int], mean, std, nms_cfg,
            resize_mode: str = "stretch") -> list[dict]:
    """HWC uint8 RGB images of any sizes -> per image {"boxes" [K,4] xyxy original pixels, "scores", "labels" 1..C}
    (numpy), preprocessed to ``img_size`` (S or (H, W)) and mapped back with ``resize_mode`` ("stretch" or
    "letterbox") as a deployed model is."""
    size = as_hw(img_size)
    x, orig = preprocess_batch(images, size, mean, std, resize_mode)
    x = torch.from_numpy(x).to(device)
    loc, conf = model(x)
    dets = postprocess(loc, conf, model.anchors(size).to(device), model.box_coder, nms_cfg)
    out = []
    for d, hw in zip(dets, orig):
        out.append({"boxes": scale_boxes(d["boxes"].cpu().numpy(), hw, resize_mode, size),
                    "scores": d["scores"].cpu().numpy(),
                    "labels": d["labels"].cpu().numpy()})
    return out


@torch.no_grad()
def evaluate(model, dataset, device, *, img_size: int | Sequence[int], mean, std, nms_cfg, batch_size: int = 16,
             workers: int = 0, max_images: int | None = None, per_class: bool = False, desc: str = "eval",
             resize_mode: str | None = None) -> dict:
    """COCO metrics (mAP, AP50, AP75, APs, APm, APl in points) of ``model`` on an eval-mode dataset,
    through the one evaluation path (``runtime.evaluation.inference_on_dataset``), plus
    ``eval_images`` and ``eval_seconds``. ``workers`` > 0: images are read ahead in a background
    thread while the model runs. ``resize_mode``: "stretch" or "letterbox" (None: the dataset's
    ``resize_mode``, the run's ``--resize``; "stretch" for datasets without one). Under torchrun every rank
    runs its share of the images and rank 0 scores them all (every rank returns the metrics)."""
    model.eval()
    resize_mode = resize_mode or getattr(dataset, "resize_mode", "stretch")
    indices, gt = eval_subset(dataset, max_images)
    shard, evaluator = distributed.shard_evaluation(indices, CocoEvaluator(gt, dataset.category_ids))

    def predictor(images: list) -> list[dict]:
        return predict(model, images, device, img_size=img_size, mean=mean, std=std, nms_cfg=nms_cfg,
                       resize_mode=resize_mode)

    metrics = inference_on_dataset(predictor, dataset, evaluator, indices=shard, batch_size=batch_size,
                                   desc=desc, per_class=per_class, prefetch=workers > 0)
    metrics["eval_seconds"] = metrics.pop("seconds")
    metrics["eval_images"] = len(indices)
    del metrics["images"]
    return metrics


def param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(total_iters: int, warmup_iters: int, schedule: str, milestones_iters: list[int], gamma: float):
    """Multiplier of the peak lr at iteration i: linear warm-up, then cosine to 0 or step decay."""
    def f(i: int) -> float:
        if i < warmup_iters:
            return 0.001 + 0.999 * i / warmup_iters
        if schedule == "cosine":
            t = (i - warmup_iters) / max(1, total_iters - warmup_iters)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return gamma ** sum(i >= m for m in milestones_iters)
    return f
