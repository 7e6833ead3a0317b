"""``Results``: one image's detections, with the model's class names and dataset category ids.

::

    det = load_detector("exports/kd/model_nms.onnx")
    r = det("a.jpg", conf=0.3)             # one image -> one Results; a list of images -> a list
    r.boxes, r.scores, r.labels            # float32 [K, 4] xyxy original pixels, float32 [K], int64 [K] in 1..C
    r.names, r.category_ids                # the model's classes (label L -> names[L - 1]) and dataset ids
    r.det_names                            # the class name of each detection
    r.plot()                               # uint8 [H, W, 3] RGB with boxes, names and scores drawn
    r.save("a_pred.jpg"); r.to_coco(image_id=7); r.to_json()
    r["boxes"]                             # dict-style access, as the plain detection dicts had

Boxes are ``xyxy`` in absolute pixels of the original image (EXIF orientation applied), as
everywhere in the product; COCO ``xywh`` is produced and read only in :mod:`runtime.metrics`.

Imports numpy and pillow only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.atomic import atomic_path
from runtime.draw import draw_detections
from runtime.metrics import from_coco_results, to_coco_results
from runtime.preprocess import load_image

__all__ = ["Results"]

_KEYS = ("boxes", "scores", "labels")


class Results:
    """Detections of one image.

    ``boxes`` float32 [K, 4] xyxy in pixels of the original image, ``scores`` float32 [K] (sorted
    as the detector returned them: descending), ``labels`` int64 [K] in 1..C; ``names`` the model's
    C class names in label order, ``category_ids`` the C dataset ids in the same order (label
    ``L`` is dataset category ``category_ids[L - 1]``); ``orig_shape`` ``(h, w)`` of the original
    image; ``source`` the image given to the detector (a path, a PIL image or a uint8 array; used
    by :meth:`plot`) and ``path`` its file, when it has one.

    ``len(r)`` is the number of detections; ``r["boxes"]`` / ``r["scores"]`` / ``r["labels"]`` and
    ``dict(r)`` give the plain detection dict.
    """

    def __init__(self, boxes: Any, scores: Any, labels: Any, *, names: Sequence[str], category_ids: Sequence[int],
                 orig_shape: Sequence[int], source: Any = None, path: str | os.PathLike[str] | None = None) -> None:
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(labels).reshape(-1).astype(np.int64, copy=False)
        k = self.boxes.shape[0]
        if self.scores.shape[0] != k or self.labels.shape[0] != k:
            raise ValueError(f"boxes [K, 4], scores [K] and labels [K] must agree on K; got {self.boxes.shape}, "
                             f"{self.scores.shape}, {self.labels.shape}")
        self.names = tuple(str(n) for n in names)
        self.category_ids = tuple(int(c) for c in category_ids)
        if len(self.names) != len(self.category_ids):
            raise ValueError(f"names has {len(self.names)} entries, category_ids {len(self.category_ids)}")
        if k and (self.labels.min() < 1 or self.labels.max() > len(self.names)):
            raise ValueError(f"labels must be in 1..{len(self.names)} (0 is background), got "
                             f"{int(self.labels.min())}..{int(self.labels.max())}")
        h, w = (int(v) for v in orig_shape)
        self.orig_shape = (h, w)
        self.source = source
        if path is None and isinstance(source, (str, os.PathLike)):
            path = source
        self.path = None if path is None else str(path)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_detections(cls, det: dict[str, np.ndarray], meta: Any, orig_shape: Sequence[int],
                        source: Any = None) -> Results:
        """A detection dict (``boxes`` / ``scores`` / ``labels``) of a model with sidecar ``meta``."""
        return cls(det["boxes"], det["scores"], det["labels"], names=meta.class_names,
                   category_ids=meta.category_ids, orig_shape=orig_shape, source=source)

    @classmethod
    def from_coco(cls, records: Sequence[dict[str, Any]], *, names: Sequence[str], category_ids: Sequence[int],
                  orig_shape: Sequence[int], image_id: int | None = None, source: Any = None) -> Results:
        """COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) -> Results;
        with ``image_id``, only that image's records. The inverse of :meth:`to_coco`."""
        if image_id is not None:
            records = [r for r in records if int(r["image_id"]) == int(image_id)]
        boxes, scores, labels = from_coco_results(records, category_ids)
        order = np.argsort(-scores, kind="stable")
        return cls(boxes[order], scores[order], labels[order], names=names, category_ids=category_ids,
                   orig_shape=orig_shape, source=source)

    def _subset(self, keep: np.ndarray) -> Results:
        return Results(self.boxes[keep], self.scores[keep], self.labels[keep], names=self.names,
                       category_ids=self.category_ids, orig_shape=self.orig_shape, source=self.source, path=self.path)

    def filter(self, conf: float) -> Results:
        """The detections with score >= ``conf`` (a new Results)."""
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= float(conf) <= 1.0:
            raise ValueError(f"conf must be a number in [0, 1], got {conf!r}")
        return self._subset(self.scores >= float(conf))

    # -- per detection ---------------------------------------------------------------------
    @property
    def det_names(self) -> list[str]:
        """Class name of each detection, [K]."""
        return [self.names[int(lab) - 1] for lab in self.labels]

    @property
    def det_category_ids(self) -> np.ndarray:
        """Dataset category id of each detection, int64 [K]."""
        return np.asarray([self.category_ids[int(lab) - 1] for lab in self.labels], dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    # -- dict-style access (the plain detection dict) --------------------------------------
    def __getitem__(self, key: str) -> np.ndarray:
        if key in _KEYS:
            return getattr(self, key)
        if isinstance(key, str):
            raise KeyError(f"{key!r}: Results has keys {list(_KEYS)} (and attributes names, category_ids, ...)")
        raise TypeError(f"Results are indexed by {list(_KEYS)}, not by {type(key).__name__}: a detector returns one "
                        f"Results for one image and a list of them for a list of images; use r.filter(conf) to "
                        f"keep some detections")

    def keys(self) -> tuple[str, ...]:
        return _KEYS

    def __contains__(self, key: object) -> bool:
        return key in _KEYS

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _KEYS else default

    # -- pictures --------------------------------------------------------------------------
    @property
    def orig_img(self) -> np.ndarray:
        """The original image, uint8 [H, W, 3] RGB (read from ``source``; EXIF orientation applied)."""
        if self.source is None:
            raise ValueError("this Results has no source image: pass image= (uint8 [H, W, 3] RGB) to plot()")
        img = load_image(self.source)
        if img.shape[:2] != self.orig_shape:
            raise ValueError(f"the source image is {img.shape[1]}x{img.shape[0]} but the detections were made on "
                             f"{self.orig_shape[1]}x{self.orig_shape[0]} (h, w = {self.orig_shape})")
        return img

    def plot(self, image: Any = None, *, line_width: int | None = None, font_size: int | None = None,
             labels: bool = True, conf: bool = True) -> np.ndarray:
        """The picture with every box, class name and (``conf``) score drawn: uint8 [H, W, 3] RGB.

        ``image``: the original picture (default: :attr:`orig_img`); ``labels=False`` draws boxes only.
        """
        img = self.orig_img if image is None else load_image(image)
        return draw_detections(img, self.boxes, self.labels, self.scores if conf else None, self.names,
                               line_width=line_width, font_size=font_size, show_labels=labels)

    def save(self, path: str | os.PathLike[str], *, quality: int = 92, **plot_kwargs: Any) -> Path:
        """Write :meth:`plot` to ``path`` (format from the suffix: .jpg, .png, ...); return the Path."""
        target = Path(path)
        picture = Image.fromarray(self.plot(**plot_kwargs))
        options = {"quality": quality} if target.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
        try:
            with atomic_path(target) as tmp:
                picture.save(tmp, **options)
        except (KeyError, ValueError) as e:  # PIL: unknown file extension
            raise ValueError(f"cannot write a picture to {target}: {e} (use .jpg or .png)") from None
        return target

    # -- export ----------------------------------------------------------------------------
    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO result dicts ``{image_id, category_id (dataset id), bbox [x, y, w, h], score}``."""
        return to_coco_results(image_id, self.boxes, self.scores, self.labels, self.category_ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: image path and (h, w), and each detection's box (xyxy pixels), score, label,
        class name and category id."""
        return {
            "image": self.path, "orig_shape": list(self.orig_shape),
            "detections": [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 5), "label": int(lab),
                            "name": name, "category_id": int(cat)}
                           for box, s, lab, name, cat in zip(self.boxes, self.scores, self.labels, self.det_names,
                                                             self.det_category_ids)],
        }

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for n in self.det_names:
            counts[n] = counts.get(n, 0) + 1
        what = ", ".join(f"{v} {k}" for k, v in counts.items()) or "nothing"
        where = f"{self.path} " if self.path else ""
        return f"Results({len(self)} detections: {what}; image {where}{self.orig_shape[1]}x{self.orig_shape[0]})"
