"""The SSD training augmentation, built from torchvision.transforms.v2.

Input to every pipeline: ``(image, target)`` with ``image`` a ``tv_tensors.Image`` uint8
[3, H, W] RGB and ``target = {"boxes": tv_tensors.BoundingBoxes xyxy absolute pixels of that
image, "labels": int64 [M], "ignore": bool [M]}``. Output: image float32 [3, H, W] normalised as
``(x / 255 - mean) / std``, boxes xyxy absolute pixels of the H x W input, with labels and ignore
flags filtered together with the boxes by ``SanitizeBoundingBoxes``.

The recipe (torchvision's SSD reference): RandomPhotometricDistort, RandomZoomOut filled with the
dataset mean, RandomIoUCrop, RandomHorizontalFlip, Resize to H x W, ClampBoundingBoxes,
SanitizeBoundingBoxes, ToDtype(float32, scale), Normalize. RandomIoUCrop only makes sense with
boxes (with none it never crops and burns its trials), so images without boxes get the same
pipeline minus that step.

The final resize follows the run's ``resize_mode`` (``--resize``), the geometry the deployed model's
preprocessing declares in its sidecar: "stretch" warps to H x W, "letterbox" (:class:`Letterbox`) scales the
image to fit with its aspect ratio kept and centres it on a grey H x W canvas, exactly where
``runtime.preprocess.letterbox_geometry`` puts it; boxes follow through the tv_tensors kernels.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from runtime.errors import check_choice
from runtime.metadata import RESIZE_MODES
from runtime.preprocess import LETTERBOX_FILL, letterbox_geometry
from runtime.sizes import as_hw


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


class Letterbox(T.Transform):
    """Resize to fit ``size`` (S, or (H, W)) with the aspect ratio kept, centred on a grey canvas: the geometry
    of :func:`runtime.preprocess.letterbox_geometry`, so a box lands where the deployed preprocessing puts it."""

    def __init__(self, size: int | Sequence[int]):
        super().__init__()
        self.size = as_hw(size, "letterbox size")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        nh, nw, top, left = letterbox_geometry(T.query_size(flat_inputs), self.size)
        return {"fit": [nh, nw], "padding": [left, top, self.size[1] - nw - left, self.size[0] - nh - top]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self._call_kernel(F.resize, inpt, params["fit"], antialias=True)
        # The bars are 114 grey (runtime.preprocess.LETTERBOX_FILL), not the mean colour: the deployed
        # preprocessing pads with 114, and training on other bars would teach a border the model never sees.
        fill = LETTERBOX_FILL if isinstance(inpt, tv_tensors.Image) else 0
        return self._call_kernel(F.pad, out, padding=params["padding"], fill=fill)


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[list, list]:
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 RGB values in [0, 1] units with std > 0, "
                         f"got mean={mean}, std={std}")
    return mean, std


def build_train_transform(img_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float], *,
                          augment: bool = True, iou_crop: bool = True,
                          zoom_out_side: tuple[float, float] = (1.0, 4.0), resize_mode: str = "stretch") -> T.Compose:
    """The training pipeline for ``(image, target)`` (see the module docstring).

    ``augment=False``: only Resize + sanitize + ToDtype + Normalize (deterministic).
    ``iou_crop=False``: the augmenting pipeline without RandomIoUCrop (images without boxes).
    ``mean``/``std``: RGB in [0, 1] units; the zoom-out canvas is filled with ``mean``.
    ``img_size``: the input, S (square) or (H, W) (:func:`runtime.sizes.as_hw`).
    ``resize_mode``: the final resize to H x W, "stretch" or "letterbox" (:class:`Letterbox`).
    """
    size = as_hw(img_size)
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    mean, std = _check_mean_std(mean, std)
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
        Letterbox(size) if resize_mode == "letterbox" else T.Resize(size, antialias=True),
        T.ClampBoundingBoxes(),
        T.SanitizeBoundingBoxes(labels_getter=labels_and_ignore),
        T.ToDtype(torch.float32, scale=True),  # images only; boxes/labels untouched
        T.Normalize(mean=mean, std=std),
    ]
    return T.Compose(steps)
