"""Network input sizes: one spelling for square and non-square inputs.

A training config's ``img_size`` is an int ``S`` (a square S x S input, every run written before non-square
inputs existed) or ``[H, W]``; on the command line ``S`` or ``HxW`` (height first: ``384x512`` is 384 rows by
512 columns, a landscape input). :func:`as_hw` turns any of these into the ``(H, W)`` the sidecar's
``input_size``, the preprocessing, the anchors and the exported graphs use; :func:`size_value` gives back
the config's stored form (``S`` when square, so square runs read and print as before).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

EXPECTED = "an integer >= 1 or H x W written HxW, e.g. 320 or 384x512 (height 384, width 512 pixels)"


def _bad(value: Any, what: str) -> ValueError:
    return ValueError(f"{what} {value!r}: expected {EXPECTED}")


def _pixels(v: Any) -> int:
    """An int (or a float holding one; not a bool) -> int; ValueError otherwise."""
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, float)) or not float(v).is_integer():
        raise ValueError
    return int(v)


def as_hw(img_size: Any, what: str = "img_size") -> tuple[int, int]:
    """``S`` (int or digit string), ``"HxW"``, ``(H, W)`` or ``[H, W]`` -> ``(H, W)`` ints >= 1.

    ValueError, one line naming ``what`` and the value, for anything else ("384x", 0, [1, 2, 3], 3.5)."""
    try:
        if isinstance(img_size, str):
            parts = img_size.strip().lower().split("x")
            if not all(p.strip().isdigit() for p in parts):
                raise ValueError
            hw = [int(p) for p in parts]
        elif isinstance(img_size, Sequence):
            hw = [_pixels(v) for v in img_size]
        else:
            hw = [_pixels(img_size)]
    except (ValueError, TypeError):
        raise _bad(img_size, what) from None
    if len(hw) not in (1, 2) or min(hw) < 1:
        raise _bad(img_size, what)
    return (hw[0], hw[-1])


def size_value(img_size: Any, what: str = "img_size") -> int | list[int]:
    """The config's stored form of a size: ``S`` when square, else ``[H, W]`` (see :func:`as_hw`)."""
    h, w = as_hw(img_size, what)
    return h if h == w else [h, w]


def size_text(img_size: Any) -> str:
    """``"300"`` for a square size, ``"384x512"`` (H x W) otherwise: how reports and logs print it."""
    h, w = as_hw(img_size)
    return str(h) if h == w else f"{h}x{w}"


def is_size(img_size: Any) -> bool:
    """Whether :func:`as_hw` accepts ``img_size``."""
    try:
        as_hw(img_size)
    except ValueError:
        return False
    return True
