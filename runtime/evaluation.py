"""The one evaluation path: run a predictor over a dataset and score it with an evaluator.

::

    indices, gt = eval_subset(dataset, max_images)
    evaluator = CocoEvaluator(gt, category_ids, class_names)
    metrics = inference_on_dataset(predictor, dataset, evaluator, indices=indices)

The same loop serves training-time evaluation (a PyTorch predictor), ``python -m runtime.evaluate``
and parity (a :class:`~runtime.detector.Detector`), the export's INT8 gate and the benchmark.
Detectron2's ``inference_on_dataset(model, data_loader, evaluator)`` is the model; this one reads
the dataset itself, in order, and needs neither torch nor a data loader.

Contracts:

* ``predictor(images) -> detections``: ``images`` a list of uint8 HWC RGB arrays of any sizes;
  one dict per image with ``boxes`` float32 [K, 4] xyxy in pixels of that original image,
  ``scores`` float32 [K] and ``labels`` int [K] in ``1..C`` (0 is background).
* ``dataset[i] -> (image uint8 HWC RGB, target)`` with ``target["image_id"]``; ``len(dataset)``;
  for :func:`eval_subset` also ``coco_gt()`` (COCO dict) and ``image_ids`` (image id of item i).
* ``evaluator``: ``reset()``, ``process(image_id, boxes, scores, labels)``,
  ``evaluate(per_class=...) -> dict`` (:class:`runtime.metrics.CocoEvaluator`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np

Predictor = Callable[[list[np.ndarray]], Sequence[dict[str, np.ndarray]]]


def eval_subset(dataset: Any, max_images: int | None) -> tuple[list[int], dict[str, Any]]:
    """Indices of the first ``max_images`` items (all when None or more than there are) and the
    dataset's COCO ground truth restricted to those images (images and annotations lists)."""
    gt = dataset.coco_gt()
    n = len(dataset)
    if max_images is None or max_images >= n:
        return list(range(n)), gt
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1 (or None for all {n} images), got {max_images}")
    indices = list(range(max_images))
    ids = {int(dataset.image_ids[i]) for i in indices}
    gt = {**gt, "images": [im for im in gt["images"] if int(im["id"]) in ids],
          "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in ids]}
    return indices, gt


def _load(dataset: Any, chunk: Sequence[int]) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    items = [dataset[i] for i in chunk]
    return [im for im, _ in items], [t for _, t in items]


def iter_batches(dataset: Any, indices: Sequence[int], batch_size: int, prefetch: bool = False
                 ) -> Iterator[tuple[list[np.ndarray], list[dict[str, Any]]]]:
    """``(images, targets)`` of consecutive chunks of ``indices``, in order. ``prefetch``: read the
    next chunk in a background thread while the caller works on this one (decoding overlaps the
    model; results are identical)."""
    chunks = [indices[s:s + batch_size] for s in range(0, len(indices), batch_size)]
    if not prefetch or len(chunks) < 2:
        yield from (_load(dataset, c) for c in chunks)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load, dataset, chunks[0])
        for k in range(len(chunks)):
            batch = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(_load, dataset, chunks[k + 1])
            yield batch


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False, file=sys.stderr)


def inference_on_dataset(predictor: Predictor, dataset: Any, evaluator: Any, *,
                         indices: Sequence[int] | None = None, batch_size: int = 8, progress: bool = True,
                         desc: str = "eval", per_class: bool = True, prefetch: bool = False) -> dict[str, Any]:
    """Run ``predictor`` over ``dataset[indices]`` (all items when None) in batches of
    ``batch_size``, feed every image's detections to ``evaluator`` (reset first) and return
    ``evaluator.evaluate(per_class=per_class)`` plus ``images`` (items run) and ``seconds``
    (wall time of reading and predicting, scoring excluded). Contracts: the module docstring."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = list(range(len(dataset))) if indices is None else list(indices)
    evaluator.reset()
    t0 = time.perf_counter()
    with _progress_bar(len(indices), desc, progress) as bar:
        for images, targets in iter_batches(dataset, indices, batch_size, prefetch):
            dets = predictor(images)
            if len(dets) != len(images):
                raise RuntimeError(f"the predictor returned {len(dets)} detection sets for {len(images)} images")
            for d, t in zip(dets, targets):
                evaluator.process(int(t["image_id"]), d["boxes"], d["scores"], d["labels"])
            if bar is not None:
                bar.update(len(images))
    seconds = time.perf_counter() - t0
    metrics = evaluator.evaluate(per_class=per_class)
    metrics.update({"images": len(indices), "seconds": seconds})
    return metrics
