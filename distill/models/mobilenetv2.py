"""MobileNetV2 backbone for SSD-Lite (Sandler et al. 2018, sec. 6.2).

The first SSD-Lite layer is attached to the expansion of the 15th layer (output stride 16) and the
second to the last 1x1 layer (output stride 32), as in the paper's SSDLite.
Layer layout is torchvision's ``mobilenet_v2(...).features`` so its ImageNet state dicts load.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2


class MobileNetV2Backbone(nn.Module):
    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        self.features = mobilenet_v2(weights=None, width_mult=width_mult).features
        # features[14] is the first stride-2 block of the 160-channel stage: conv[0] is its 1x1 expansion.
        expand = self.features[14].conv[0]
        self.out_channels = [expand.out_channels, self.features[-1].out_channels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.features[:14](x)
        c4 = self.features[14].conv[0](x)                # stride 16, expansion (576 ch at width 1.0)
        x = self.features[14].conv[1:](c4)                # stride-2 block: no residual
        x = self.features[15:](x)                         # stride 32, 1280 ch
        return [c4, x]
