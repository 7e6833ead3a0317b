"""The training loop as two plain functions, ``train_one_epoch`` and ``evaluate`` (torchvision style).

``train_one_epoch`` takes a ``loss_fn(model, images, targets) -> dict[str, Tensor]`` of already
weighted, named terms: the plain detector and every distillation method plug in the same way.
``evaluate`` preprocesses with ``runtime.preprocess`` -- the exact pixels a deployed model sees --
and scores with ``runtime.metrics.CocoEvaluator``.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from runtime.metrics import CocoEvaluator
from runtime.preprocess import preprocess_batch, scale_boxes

from .postprocess import postprocess


class NonFiniteLossError(RuntimeError):
    pass


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn: Callable, device, epoch: int, *,
                    scaler=None, clip_grad: float | None = None, ema=None, desc: str = "train") -> dict:
    """One pass over ``loader``; returns the mean of every loss term, the total and the last lr."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    bar = tqdm(loader, desc=f"{desc} {epoch}", leave=False, dynamic_ncols=True)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=scaler is not None):
            losses = loss_fn(model, images, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {n}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        n += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["total"] = sums.get("total", 0.0) + total.item()
        bar.set_postfix({k: f"{v / n:.3f}" for k, v in sums.items()})
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["lr"] = optimizer.param_groups[0]["lr"]
    return out


def eval_subset(dataset, max_images: int | None):
    """The first ``max_images`` images (deterministic), and the COCO ground truth restricted to them."""
    gt = dataset.coco_gt()
    if max_images is None or max_images >= len(dataset):
        return dataset, gt
    keep_idx = list(range(max_images))
    ids = {dataset.image_ids[i] for i in keep_idx}
    gt = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    return Subset(dataset, keep_idx), gt


@torch.no_grad()
def predict(model, images: list, device, *, img_size: int, mean, std, nms_cfg) -> list[dict]:
    """HWC uint8 RGB images of any sizes -> per image {"boxes" [K,4] xyxy original pixels, "scores", "labels" 1..C} (numpy)."""
    x, orig = preprocess_batch(images, (img_size, img_size), mean, std)
    x = torch.from_numpy(x).to(device)
    loc, conf = model(x)
    dets = postprocess(loc, conf, model.anchors(img_size).to(device), model.box_coder, nms_cfg)
    out = []
    for d, hw in zip(dets, orig):
        out.append({"boxes": scale_boxes(d["boxes"].cpu().numpy(), hw), "scores": d["scores"].cpu().numpy(),
                    "labels": d["labels"].cpu().numpy()})
    return out


@torch.no_grad()
def evaluate(model, dataset, device, *, img_size: int, mean, std, nms_cfg, batch_size: int = 16, workers: int = 0,
             max_images: int | None = None, per_class: bool = False, desc: str = "eval") -> dict:
    """COCO metrics (mAP, AP50, AP75, APs, APm, APl in points) of ``model`` on an eval-mode dataset."""
    from .data import collate_eval
    model.eval()
    subset, gt = eval_subset(dataset, max_images)
    evaluator = CocoEvaluator(gt, dataset.category_ids)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_eval)
    t0 = time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        for det, t in zip(predict(model, images, device, img_size=img_size, mean=mean, std=std, nms_cfg=nms_cfg), targets):
            evaluator.process(t["image_id"], det["boxes"], det["scores"], det["labels"])
    metrics = evaluator.evaluate(per_class=per_class)
    metrics["eval_seconds"] = time.perf_counter() - t0
    metrics["eval_images"] = len(subset)
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
