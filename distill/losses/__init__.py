"""Detection losses: anchor target encoding and the SSD multibox loss."""
from __future__ import annotations

from .multibox import IGNORE, AnchorTargets, MultiBoxLoss, encode_targets

__all__ = ["IGNORE", "AnchorTargets", "MultiBoxLoss", "encode_targets"]
