"""Batch collation for DetectionDataset items (boxes vary in number, so targets stay a list)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def collate_train(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]
                  ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``[(image float32 [3, S, S], target)] -> (images float32 [B, 3, S, S], [target] * B)``."""
    images, targets = zip(*batch)
    return torch.stack(images, 0), list(targets)


def collate_eval(batch: Sequence[tuple[np.ndarray, dict[str, Any]]]
                 ) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """``[(image uint8 [H, W, 3], target)] -> ([image] * B, [target] * B)`` (sizes differ)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
