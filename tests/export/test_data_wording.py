"""export.data: the calibration source reads as English ("every 2nd", never "every 1th")."""
from __future__ import annotations

import numpy as np

from export import data as xdata


def test_every_nth():
    assert [xdata.every_nth(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "all of them", "every 2nd", "every 3rd", "every 4th", "every 11th", "every 12th", "every 13th",
        "every 21st", "every 22nd", "every 101st"]


def test_calibration_source_wording(monkeypatch):
    items = [(np.zeros((4, 4, 3), np.uint8), {}) for _ in range(6)]
    monkeypatch.setattr(xdata, "checkpoint_dataset", lambda cfg, split: (items, "shapes:train"))
    images, why = xdata.calibration_images(6, cfg={})
    assert len(images) == 6 and why.endswith("(6 images, all of them)") and "1th" not in why
    images, why = xdata.calibration_images(3, cfg={})
    assert len(images) == 3 and why.endswith("(3 images, every 2nd)")
