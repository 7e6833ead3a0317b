"""The one preprocessing implementation: training-time eval, INT8 calibration and every runtime.

Pipeline (DESIGN.md, sidecar fields in brackets)::

    load_image   any source -> uint8 HWC RGB, EXIF orientation applied       [color]
                 (decode_image: a JPEG much larger than the input is decoded at 1/2..1/8 scale)
    resize       PIL bilinear to (H, W): the whole image warped ("stretch"), or  [input_size, resize_mode]
                 scaled to fit with its aspect ratio kept and centred on a grey
                 canvas ("letterbox", :func:`letterbox_geometry`)
    normalize    (pixel / 255 - mean) / std -> float32 CHW                   [mean, std, layout]

and back: :func:`scale_boxes` maps the graph's normalised xyxy boxes to absolute pixels of the
original image, undoing the same geometry.

Only numpy and pillow are imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.errors import check_choice
from runtime.metadata import INPUT_FORMATS, RESIZE_MODES

# Grey level of the letterbox padding (the bars around a fitted image).
LETTERBOX_FILL = 114

# 16/32-bit integer greyscale modes; PIL's convert("RGB") would clip them at 255.
_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _check_resize_mode(mode: str) -> None:
    check_choice("resize_mode", mode, RESIZE_MODES)


def _pil_to_rgb(img: Image.Image, name: str) -> np.ndarray:
    """PIL image of any common mode -> uint8 HWC RGB (alpha dropped, EXIF orientation applied)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_INT_MODES:
        # 16-bit greyscale (PNG loads as I;16 or I): map 0..65535 onto 0..255.
        wide = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        # Palette transparency must go through RGBA (PIL warns on a direct P -> RGB).
        img = img.convert("RGBA")
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise ValueError(f"cannot convert image {name} of mode {img.mode!r} to RGB: {e}") from e
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ValueError(f"numpy image must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, :3])  # RGBA: drop alpha, like PIL's convert("RGB")
    raise ValueError(
        f"numpy image must be HW, HWC1, HWC3 (RGB) or HWC4 (RGBA), got shape {arr.shape}"
    )


def load_image(src: Any) -> np.ndarray:
    """Load an image as uint8 [H, W, 3] RGB.

    ``src``: a path (str / Path), a ``PIL.Image.Image`` or a numpy uint8 array (HW grey, HWC3
    RGB, HWC4 RGBA). For files and PIL images the EXIF orientation is applied, and grey, LA,
    RGBA, palette (with transparency), CMYK and 16-bit grey are converted to RGB; alpha is
    dropped, never composited. Raises ValueError naming the file if it is missing or unreadable.
    """
    if isinstance(src, np.ndarray):
        if src.ndim < 2 or src.shape[0] == 0 or src.shape[1] == 0:
            raise ValueError(f"numpy image must have a non-empty HW plane, got shape {src.shape}")
        return _array_to_rgb(src)
    if isinstance(src, Image.Image):
        return _pil_to_rgb(src, name="<PIL.Image>")
    if isinstance(src, (str, os.PathLike)):
        return _read_file(Path(src), None)[0]
    raise ValueError(
        f"image source must be a path, a PIL.Image or a uint8 numpy array, got {type(src).__name__}"
    )


# A JPEG file at least this many times larger than the network input (on both sides) is decoded at
# a reduced scale that keeps at least DRAFT_GAP x the input (Pillow's thumbnail uses the same gap).
DRAFT_GAP = 2.0
# EXIF orientations that swap width and height.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def _read_file(path: Path, draft_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """A file -> (uint8 [h', w', 3] RGB, original (h, w) after EXIF orientation). With ``draft_side``
    a JPEG is decoded by DCT scaling at 1/2, 1/4 or 1/8 while both sides stay >= ``draft_side``."""
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            w0, h0 = img.size
            swap = draft_side is not None and img.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS
            if draft_side is not None:
                img.draft(None, (draft_side, draft_side))  # a no-op for every format but JPEG
            img.load()
            rgb = _pil_to_rgb(img, name=str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    return rgb, ((w0, h0) if swap else (h0, w0)) if draft_side is not None else rgb.shape[:2]


def decode_image(src: Any, size_hw: Sequence[int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` for a network input of ``size_hw`` (H, W): (uint8 [h', w', 3] RGB, the
    original (h, w) after EXIF orientation).

    A JPEG file much larger than the input is decoded at a reduced scale (Pillow's ``Image.draft``:
    1/2, 1/4 or 1/8 by DCT scaling, both sides kept >= ``DRAFT_GAP * max(H, W)``), so no full-size
    array is ever made; ``(h', w')`` is then smaller than ``(h, w)``, the size boxes map back to.
    Other sources (and ``size_hw=None``): exactly :func:`load_image`, ``(h', w') == (h, w)``.
    """
    if size_hw is None or not isinstance(src, (str, os.PathLike)):
        rgb = load_image(src)
        return rgb, (int(rgb.shape[0]), int(rgb.shape[1]))
    h, w = _check_size_hw(size_hw)
    return _read_file(Path(src), int(np.ceil(DRAFT_GAP * max(h, w))))


def _check_size_hw(size_hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size_hw)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size_hw!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (H, W), got {size_hw!r}")
    return h, w


def letterbox_geometry(orig_hw: Sequence[int], size_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """Where a letterboxed ``(h, w)`` image lies in the ``(H, W)`` input: ``(nh, nw, top, left)``.

    The image is scaled by ``min(H / h, W / w)`` to ``nh x nw`` (rounded, at least 1 px) and
    centred: ``top = (H - nh) // 2``, ``left = (W - nw) // 2``.
    """
    h, w = (int(v) for v in orig_hw)
    big_h, big_w = _check_size_hw(size_hw)
    scale = min(big_h / h, big_w / w)
    nh, nw = max(1, min(big_h, round(h * scale))), max(1, min(big_w, round(w * scale)))
    return nh, nw, (big_h - nh) // 2, (big_w - nw) // 2


def resize(img: np.ndarray, size_hw: Sequence[int], mode: str = "stretch") -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [H, W, 3] with PIL bilinear (antialiased when shrinking).

    ``mode="stretch"`` warps the whole image to ``H x W`` ignoring aspect ratio (SSD-style);
    ``mode="letterbox"`` keeps the aspect ratio: the image is scaled to fit and centred on a
    :data:`LETTERBOX_FILL` grey canvas (:func:`letterbox_geometry`).
    """
    _check_resize_mode(mode)
    h, w = _check_size_hw(size_hw)
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(
            "resize expects a uint8 [H, W, 3] array, got "
            f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
        )
    if mode == "letterbox":
        nh, nw, top, left = letterbox_geometry(img.shape[:2], (h, w))
        canvas = np.full((h, w, 3), LETTERBOX_FILL, dtype=np.uint8)
        canvas[top:top + nh, left:left + nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
        return canvas
    out = Image.fromarray(img).resize((w, h), Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] with ``x = (pixel / 255 - mean) / std``."""
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(f"normalize expects an [H, W, 3] array, got shape {getattr(img, 'shape', None)}")
    mean_a = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_a = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean_a.shape != (3,) or std_a.shape != (3,):
        raise ValueError(f"mean and std must have 3 values each, got mean={mean!r} std={std!r}")
    if np.any(std_a <= 0):
        raise ValueError(f"std must be > 0, got {std!r}")
    x = img.astype(np.float32) / np.float32(255.0)
    x = (x - mean_a) / std_a
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(
    images: Sequence[Any],
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize_mode: str = "stretch",
) -> tuple[np.ndarray, np.ndarray]:
    """Images of any sizes -> (float32 [B, 3, H, W] network input, int64 [B, 2] original (h, w)).

    Each element of ``images`` is anything :func:`load_image` accepts. A fresh array each call;
    :class:`Preprocessor` does the same work bound to one model (and can reuse its buffer).
    """
    return Preprocessor(input_size, mean, std, resize_mode)(images)


def _letterbox_to_orig(hw: np.ndarray, input_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per image (``hw`` [B, 2] float): the xyxy multiplier from normalised input coordinates and
    the xyxy offset, so that ``orig = norm * mul + off`` (both [B, 4])."""
    big_h, big_w = _check_size_hw(input_size)
    geo = np.array([letterbox_geometry(row, (big_h, big_w)) for row in hw], dtype=np.float32).reshape(-1, 4)
    nh, nw, top, left = geo.T
    sx, sy = hw[:, 1] / nw, hw[:, 0] / nh  # original pixels per input pixel of the fitted image
    mul = np.stack([big_w * sx, big_h * sy, big_w * sx, big_h * sy], axis=1)
    off = np.stack([-left * sx, -top * sy, -left * sx, -top * sy], axis=1)
    return mul, off


def scale_boxes(boxes_norm: np.ndarray, orig_hw: Any, resize_mode: str = "stretch",
                input_size: Sequence[int] | None = None) -> np.ndarray:
    """Normalised xyxy in [0, 1] of the network input -> float32 absolute-pixel xyxy of the
    original image, clipped to it.

    ``boxes_norm``: [..., 4] as the graphs emit them. ``orig_hw``: one ``(h, w)`` for all boxes,
    or an [B, 2] array with ``boxes_norm`` of shape [B, K, 4] (one size per image). With
    "stretch", ``x * w`` and ``y * h``. With "letterbox", ``input_size`` ``(H, W)`` is needed: the
    padding is taken off and the fitted image's scale undone (:func:`letterbox_geometry`).
    x is clipped to [0, w] and y to [0, h].
    """
    _check_resize_mode(resize_mode)
    boxes = np.asarray(boxes_norm, dtype=np.float32)
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {boxes.shape}")
    hw = np.asarray(orig_hw, dtype=np.float32)
    if hw.shape == (2,):
        rows, expand = hw.reshape(1, 2), (lambda v: v[0])
    elif hw.ndim == 2 and hw.shape[1] == 2 and boxes.ndim == 3 and boxes.shape[0] == hw.shape[0]:
        rows, expand = hw, (lambda v: v[:, None, :])
    else:
        raise ValueError(
            f"orig_hw must be (h, w) or [B, 2] matching boxes [B, K, 4]; got orig_hw shape "
            f"{hw.shape} with boxes shape {boxes.shape}"
        )
    limit = expand(np.stack([rows[:, 1], rows[:, 0], rows[:, 1], rows[:, 0]], axis=1))
    if resize_mode == "letterbox":
        if input_size is None:
            raise ValueError("resize_mode 'letterbox' needs input_size (H, W) to take the padding off the boxes")
        mul, off = _letterbox_to_orig(rows, input_size)
        out = boxes * expand(mul) + expand(off)
    else:
        out = boxes * limit
    return np.clip(out, 0.0, np.broadcast_to(limit, out.shape)).astype(np.float32, copy=False)


class Preprocessor:
    """:func:`load_image`, :func:`resize` and :func:`normalize` for a batch, bound to one model.

    Build it from the sidecar with :meth:`from_meta` so nothing is re-typed per backend.
    ``pre(images) -> (float32 [B, 3, H, W], int64 [B, 2] original (h, w))``.

    The normalisation ``(p / 255 - mean) / std`` is evaluated by :func:`normalize` once for each
    of the 256 byte values and then looked up per pixel: the same float32 results, bit for bit,
    without float arithmetic per pixel. With ``reuse_buffer=True`` (what a detector uses) the
    network input is written into one preallocated buffer and the returned batch is a view of it:
    the next call overwrites it, so use one preprocessor per thread.

    ``input_format`` (the sidecar's): "float_nchw" as above; "uint8_nhwc" for a graph that
    normalises inside (``export --uint8-input``): the batch is then the resized pixels themselves,
    uint8 [B, H, W, 3] RGB, with no float copy made on the host.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        resize_mode: str = "stretch",
        reuse_buffer: bool = False,
        input_format: str = "float_nchw",
    ) -> None:
        _check_resize_mode(resize_mode)
        check_choice("input_format", input_format, INPUT_FORMATS)
        self.input_format = input_format
        self.input_size = _check_size_hw(input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.resize_mode = resize_mode
        self.reuse_buffer = bool(reuse_buffer)
        byte_values = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
        self.lut = np.ascontiguousarray(normalize(byte_values, self.mean, self.std)[:, 0, :])  # [3, 256]
        self._buf: np.ndarray | None = None

    @classmethod
    def from_meta(cls, meta: Any, reuse_buffer: bool = False) -> Preprocessor:
        """Build from a :class:`runtime.metadata.ModelMeta`."""
        return cls(meta.input_size, meta.mean, meta.std, meta.resize_mode, reuse_buffer=reuse_buffer,
                   input_format=getattr(meta, "input_format", "float_nchw"))

    def _batch_buffer(self, n: int) -> np.ndarray:
        h, w = self.input_size
        shape, dtype = ((n, h, w, 3), np.uint8) if self.input_format == "uint8_nhwc" else ((n, 3, h, w), np.float32)
        if not self.reuse_buffer:
            return np.empty(shape, dtype=dtype)
        if self._buf is None or self._buf.shape[0] < n:
            self._buf = np.empty(shape, dtype=dtype)
        return self._buf[:n]

    def __call__(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Images (paths, PIL images, uint8 arrays; any sizes) -> (float32 [B, 3, H, W], int64 [B, 2]);
        with ``input_format="uint8_nhwc"`` the batch is uint8 [B, H, W, 3]."""
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)) or len(images) == 0:
            raise ValueError(f"images must be a non-empty list of images, got {type(images).__name__}")
        batch = self._batch_buffer(len(images))
        orig = np.empty((len(images), 2), dtype=np.int64)
        for i, src in enumerate(images):
            rgb, orig[i] = decode_image(src, self.input_size)
            if rgb.shape[:2] != self.input_size:
                rgb = resize(rgb, self.input_size, self.resize_mode)
            if self.input_format == "uint8_nhwc":
                batch[i] = rgb
                continue
            for c in range(3):
                np.take(self.lut[c], rgb[:, :, c], out=batch[i, c])
        return batch, orig

    def scale_boxes(self, boxes_norm: np.ndarray, orig_hw: Any) -> np.ndarray:
        """Normalised xyxy -> absolute pixels of the original image (see :func:`scale_boxes`)."""
        return scale_boxes(boxes_norm, orig_hw, self.resize_mode, self.input_size)

    def __repr__(self) -> str:
        return (
            f"Preprocessor(input_size={self.input_size}, mean={self.mean}, std={self.std}, "
            f"resize_mode={self.resize_mode!r})"
        )
