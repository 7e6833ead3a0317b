from .multibox import IGNORE, AnchorTargets, MultiBoxLoss, encode_targets

__all__ = ["IGNORE", "AnchorTargets", "MultiBoxLoss", "encode_targets"]
