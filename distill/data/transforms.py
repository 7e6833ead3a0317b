"""The SSD training augmentation, built from torchvision.transforms.v2.

Input to every pipeline: ``(image, target)`` with ``image`` a ``tv_tensors.Image`` uint8
[3, H, W] RGB and ``target = {"boxes": tv_tensors.BoundingBoxes xyxy absolute pixels of that
image, "labels": int64 [M], "ignore": bool [M]}``. Output: image float32 [3, S, S] normalised as
``(x / 255 - mean) / std``, boxes xyxy absolute pixels of the S x S image, with labels and ignore
flags filtered together with the boxes by ``SanitizeBoundingBoxes``.

The recipe (torchvision's SSD reference): RandomPhotometricDistort, RandomZoomOut filled with the
dataset mean, RandomIoUCrop, RandomHorizontalFlip, Resize to S x S, ClampBoundingBoxes,
SanitizeBoundingBoxes, ToDtype(float32, scale), Normalize. RandomIoUCrop only makes sense with
boxes (with none it never crops and burns its trials), so images without boxes get the same
pipeline minus that step.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T


#: Training augmentation policies: "ssd" the full recipe above (SSD's; slow to learn from on short
#: schedules: zoom-out and IoU crops make most objects tiny or cut), "light" photometric distortion and
#: horizontal flip only (the CPU presets), "none" resize only.
AUGMENT_POLICIES = ("ssd", "light", "none")


def labels_and_ignore(inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``labels_getter`` for SanitizeBoundingBoxes: the per-box tensors that travel with boxes.

    Module-level (not a lambda) so the pipeline pickles into DataLoader workers.
    """
    target = inputs[1]
    return target["labels"], target["ignore"]


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[list, list]:
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 RGB values in [0, 1] units with std > 0, "
                         f"got mean={mean}, std={std}")
    return mean, std


def build_train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], *,
                          augment: bool = True, iou_crop: bool = True,
                          zoom_out_side: tuple[float, float] = (1.0, 4.0)) -> T.Compose:
    """The training pipeline for ``(image, target)`` (see the module docstring).

    ``augment=False``: only Resize + sanitize + ToDtype + Normalize (deterministic).
    ``iou_crop=False``: the augmenting pipeline without RandomIoUCrop (images without boxes).
    ``mean``/``std``: RGB in [0, 1] units; the zoom-out canvas is filled with ``mean``.
    """
    if int(img_size) < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    mean, std = _check_mean_std(mean, std)
    size = (int(img_size), int(img_size))
    steps: list = []
    if augment:
        fill = tuple(int(round(m * 255)) for m in mean)
        steps.append(T.RandomPhotometricDistort(p=0.5))
        if max(zoom_out_side) > 1.0:
            steps.append(T.RandomZoomOut(fill={tv_tensors.Image: fill, "others": 0}, side_range=zoom_out_side,
                                         p=0.5))
        if iou_crop:
            steps.append(T.RandomIoUCrop())
        steps.append(T.RandomHorizontalFlip(p=0.5))
    steps += [
        T.Resize(size, antialias=True),
        T.ClampBoundingBoxes(),
        T.SanitizeBoundingBoxes(labels_getter=labels_and_ignore),
        T.ToDtype(torch.float32, scale=True),  # images only; boxes/labels untouched
        T.Normalize(mean=mean, std=std),
    ]
    return T.Compose(steps)
