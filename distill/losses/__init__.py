"""Detection losses: anchor target encoding, the SSD multibox loss, RefineDet's eq. 1, and the one objective
over both (:class:`DetectionLoss`)."""
from __future__ import annotations

from .detection import DetectionLoss, loc_cls
from .multibox import IGNORE, AnchorTargets, MultiBoxLoss, encode_targets

__all__ = ["IGNORE", "AnchorTargets", "DetectionLoss", "MultiBoxLoss", "encode_targets", "loc_cls"]
