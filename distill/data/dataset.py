"""DetectionDataset: one in-memory list of validated image records, two kinds of items.

Box convention inside this package (DESIGN.md): ``xyxy`` float32 in absolute pixels of the
ORIGINAL image, clipped to it. Labels are contiguous ``1..C``; ``category_ids[L - 1]`` is the
dataset's own id of label ``L``.

* ``train=True``:  ``(image float32 [3, H, W] normalised (``img_size``: S or (H, W)), {"boxes": float32
  [M, 4] xyxy in [0, 1] (x over W, y over H) of the resized (``resize_mode``: stretched or letterboxed)
  image, "labels": int64 [M] in 1..C, "ignore": bool [M], "image_id": int})``
* ``train=False``: ``(image uint8 [H, W, 3] RGB original size, {"image_id": int,
  "orig_size": (H, W)})``; the evaluator preprocesses with runtime.preprocess itself, with the
  dataset's ``resize_mode`` unless told otherwise.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from distill.data.transforms import AUGMENT_POLICIES, build_train_transform
from runtime.annotations import ImageRecord, clip_box_xyxy, records_coco_gt  # noqa: F401 (re-exported)
from runtime.errors import check_choice
from runtime.metadata import RESIZE_MODES
from runtime.preprocess import load_image
from runtime.sizes import as_hw, size_value

ON_BAD_SAMPLE = ("error", "skip")
_MAX_WARNINGS_PER_REASON = 10
# RandomIoUCrop draws crop sides of 0.3..1 x the image's: below 4 px a side a crop can be 0 px wide.
MIN_CROP_SIDE = 4


class BadSampleReporter:
    """Raise (``mode="error"``) or warn-and-count (``mode="skip"``) bad input.

    ``counts``: reason -> number of skipped items/annotations. After 10 warnings of one reason
    further ones are counted silently (one note says so).
    """

    def __init__(self, mode: str = "error"):
        if mode not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {list(ON_BAD_SAMPLE)}, got {mode!r}")
        self.mode = mode
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str, message: str) -> None:
        if self.mode == "error":
            raise ValueError(message)
        n = self.counts.get(reason, 0) + 1
        self.counts[reason] = n
        if n <= _MAX_WARNINGS_PER_REASON:
            suffix = (f" (further '{reason}' warnings are suppressed, see bad_samples)"
                      if n == _MAX_WARNINGS_PER_REASON else "")
            warnings.warn(f"skipped ({reason}): {message}{suffix}", stacklevel=3)


class DetectionDataset(torch.utils.data.Dataset):
    """Detection dataset over validated :class:`ImageRecord` s (see the module docstring).

    Unreadable images are found at ``__getitem__`` time: with ``on_bad_sample="error"`` a
    ValueError naming the file; with ``"skip"`` a warning, a count in ``bad_samples`` (in this
    process: DataLoader workers count in their own copy) and the next readable item is returned.
    """

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str],
                 category_ids: Sequence[int], *, train: bool, img_size: int | Sequence[int],
                 mean: Sequence[float], std: Sequence[float], augment: bool | str = True,
                 on_bad_sample: str = "error", name: str = "dataset",
                 bad_samples: dict[str, int] | None = None, zoom_out_max: float = 4.0,
                 resize_mode: str = "stretch"):
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.records = list(records)
        self.class_names: list[str] = list(class_names)
        self.category_ids: list[int] = [int(c) for c in category_ids]
        self.image_ids: list[int] = [r.image_id for r in self.records]
        self.train = bool(train)
        # True/"ssd": the full SSD recipe; "light": photometric + flip only; False/"none": resize only.
        policy = ("ssd" if augment else "none") if isinstance(augment, bool) else augment
        if policy not in AUGMENT_POLICIES:
            raise ValueError(f"augment must be one of {list(AUGMENT_POLICIES)}, got {augment!r}")
        self.augment_policy = policy
        self.augment = policy != "none"
        self.img_size = size_value(img_size)  # S (square) or [H, W], as the config holds it
        self.input_hw = as_hw(img_size)
        # "stretch" | "letterbox": the training resize and the geometry the evaluator preprocesses with
        check_choice("resize_mode", resize_mode, RESIZE_MODES)
        self.resize_mode = resize_mode
        self.mean, self.std = tuple(mean), tuple(std)
        self.name = name
        self.source: Any = name  # the file that lists the images (the annotation json, the VOC split file)
        self._reporter = BadSampleReporter(on_bad_sample)
        self._reporter.counts.update(bad_samples or {})
        self._bad_indices: set = set()
        self._first_bad: str = ""
        self._tiny_warned = False
        if self.train:
            rm = {"resize_mode": resize_mode}
            self._tf_plain = build_train_transform(img_size, mean, std, augment=False, **rm)
            if zoom_out_max < 1.0:
                raise ValueError(f"zoom_out_max must be >= 1 (1 disables zoom-out), got {zoom_out_max}")
            zoom = (1.0, float(zoom_out_max) if policy == "ssd" else 1.0)
            self._tf_aug = build_train_transform(img_size, mean, std, augment=True, zoom_out_side=zoom,
                                                 iou_crop=policy == "ssd", **rm)
            # images without boxes skip RandomIoUCrop; the other policies never crop anyway
            self._tf_aug_nocrop = self._tf_aug if policy != "ssd" else build_train_transform(
                img_size, mean, std, augment=True, iou_crop=False, zoom_out_side=zoom, **rm)

    # ---------------------------------------------------------------- bookkeeping
    @property
    def bad_samples(self) -> dict[str, int]:
        """reason -> count of skipped items/annotations (construction and __getitem__)."""
        return self._reporter.counts

    @property
    def on_bad_sample(self) -> str:
        return self._reporter.mode

    @property
    def num_classes(self) -> int:
        """C, object classes (background excluded)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    # ---------------------------------------------------------------- items
    def _load(self, index: int) -> np.ndarray | None:
        rec = self.records[index]
        try:
            img = load_image(rec.path)  # raises ValueError naming the file
            if img.shape[:2] != (rec.height, rec.width):
                raise ValueError(f"image file {rec.path} is {img.shape[1]}x{img.shape[0]} (WxH) but "
                                 f"the annotations say {rec.width}x{rec.height}")
        except ValueError as e:
            if index not in self._bad_indices:
                self._bad_indices.add(index)
                self._first_bad = self._first_bad or f"image id {rec.image_id}: {e}"
                self._reporter("unreadable_image", f"{self.name}: image id {rec.image_id}: {e}")
            return None
        return img

    def __getitem__(self, index: int):
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for k in range(n):
            j = (index + k) % n
            if j in self._bad_indices:
                continue
            img = self._load(j)
            if img is not None:
                return self._train_item(self.records[j], img) if self.train else \
                    self._eval_item(self.records[j], img)
        raise RuntimeError(f"{self.name}: none of the {n} images is readable (bad_samples={self.bad_samples}); "
                           f"the first: {self._first_bad}")

    def _eval_item(self, rec: ImageRecord, img: np.ndarray):
        return img, {"image_id": rec.image_id, "orig_size": (int(img.shape[0]), int(img.shape[1]))}

    def _train_item(self, rec: ImageRecord, img: np.ndarray):
        h, w = img.shape[:2]
        image = tv_tensors.Image(torch.from_numpy(np.array(img.transpose(2, 0, 1), order="C")))  # a writable copy
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4),
                                              format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor(rec.labels, dtype=torch.int64).reshape(-1),
            "ignore": torch.tensor(rec.ignore, dtype=torch.bool).reshape(-1),
        }
        if not self.augment:
            tf = self._tf_plain
        else:
            tf = self._tf_aug if len(rec.boxes) and self._croppable(rec, h, w) else self._tf_aug_nocrop
        image, target = tf(image, target)
        h_in, w_in = self.input_hw
        scale = torch.tensor([w_in, h_in, w_in, h_in], dtype=torch.float32)
        boxes = (target["boxes"].as_subclass(torch.Tensor) / scale).clamp_(0.0, 1.0).to(torch.float32)
        return image.as_subclass(torch.Tensor), {
            "boxes": boxes.reshape(-1, 4),
            "labels": target["labels"],
            "ignore": target["ignore"],
            "image_id": rec.image_id,
        }

    def _croppable(self, rec: ImageRecord, h: int, w: int) -> bool:
        """Whether the IoU crop can cut this image (sides >= MIN_CROP_SIDE); the first one that cannot is named."""
        if min(h, w) >= MIN_CROP_SIDE:
            return True
        if not self._tiny_warned and self.augment_policy == "ssd":
            self._tiny_warned = True
            warnings.warn(f"{self.name}: image id {rec.image_id} ({rec.path}) is {w}x{h} px; images under "
                          f"{MIN_CROP_SIDE} px a side are trained without the IoU crop", stacklevel=3)
        return False

    # ---------------------------------------------------------------- evaluation
    def coco_gt(self) -> dict[str, Any]:
        """Ground truth as a COCO dict for pycocotools (``COCO(); .dataset = d; .createIndex()``).

        images: id/width/height/file_name; annotations: bbox xywh in ORIGINAL pixels (clipped),
        area, iscrowd (1 for COCO crowd and VOC difficult, which COCOeval then ignores),
        category_id (the dataset's own id); annotation ids are renumbered 1..N (COCOeval treats
        id 0 as "unmatched"). Images skipped as unreadable are still listed: their boxes count as
        missed, which is the honest score.
        """
        return records_coco_gt(self.records, self.category_ids, self.class_names)

    def __repr__(self) -> str:
        return f"DetectionDataset({describe(self)})"


def check_training_sets(train_set: DetectionDataset, val_set: DetectionDataset, batch_size: int) -> None:
    """Before a run starts: ValueError when the training set fills no batch (the last partial batch of an epoch is
    dropped); a warning for a set without any box (nothing to learn, or an undefined validation mAP)."""
    for ds in (train_set, val_set):
        if len(ds) == 0:
            skipped = f" (all skipped: {ds.bad_samples})" if ds.bad_samples else ""
            raise ValueError(f"dataset {ds.name} has no image: {ds.source} lists none{skipped}; expected at least one")
    n = len(train_set)
    if n < batch_size:
        raise ValueError(f"{train_set.name}: {n} training images < --batch-size {batch_size}: an epoch would have "
                         f"no full batch (a partial last batch is dropped); use --batch-size {n} or less, or more "
                         f"images")
    if not any(len(r.boxes) for r in train_set.records):
        warnings.warn(f"{train_set.name}: the training set has no boxes at all: the detector learns background "
                      f"only", stacklevel=2)
    if not any(len(r.boxes) for r in val_set.records):
        warnings.warn(f"{val_set.name}: the validation set has no boxes at all: COCO mAP is undefined there (reported "
                      f"as NaN), so no epoch is kept as best.pt; the run's summary scores last.pt",
                      stacklevel=2)


def describe(dataset: DetectionDataset) -> str:
    """One line: name, images, boxes (ignored ones), classes, mode, skipped samples."""
    n_boxes = sum(len(r.boxes) for r in dataset.records)
    n_ign = sum(int(r.ignore.sum()) for r in dataset.records)
    n_empty = sum(len(r.boxes) == 0 for r in dataset.records)
    mode = f"train (augmentation: {dataset.augment_policy})" if dataset.train else "eval"
    if dataset.resize_mode != "stretch":
        mode += f", {dataset.resize_mode} resize"
    s = (f"{dataset.name}: {len(dataset)} images ({n_empty} without boxes), {n_boxes} boxes "
         f"({n_ign} crowd/difficult), {dataset.num_classes} classes, {mode}")
    if dataset.bad_samples:
        s += f", skipped {dict(sorted(dataset.bad_samples.items()))}"
    return s
