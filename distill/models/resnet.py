"""ResNet-50 backbone from torchvision (layer3 at stride 16, layer4 at stride 32).
Attribute names follow torchvision's ``resnet50`` so its ImageNet state dicts load."""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet50


class ResNet50Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        r = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.out_channels = [1024, 2048]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c4 = self.layer3(self.layer2(self.layer1(x)))
        return [c4, self.layer4(c4)]
