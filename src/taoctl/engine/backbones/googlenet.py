"""GoogLeNet (Inception v1) and SqueezeNet 1.0, keyed like torchvision.

GoogLeNet's third inception branch is the paper's (and TAO's) 5x5 conv; torchvision's
weights have 3x3 there, so those tensors are reported as shape mismatches when loading them.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Backbone, BuildOptions, init_weights


class BasicConv2d(nn.Module):
    def __init__(self, o: BuildOptions, cin, cout, kernel, stride=1):
        super().__init__()
        self.conv = o.conv(cin, cout, kernel, stride)
        self.bn = o.norm(cout)
        self.relu = o.act()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, o: BuildOptions, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(o, cin, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(o, cin, ch3x3red, 1),
                                     BasicConv2d(o, ch3x3red, ch3x3, 3))
        self.branch3 = nn.Sequential(BasicConv2d(o, cin, ch5x5red, 1),
                                     BasicConv2d(o, ch5x5red, ch5x5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     BasicConv2d(o, cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(Backbone):
    INCEPTIONS = {
        "inception3a": (192, 64, 96, 128, 16, 32, 32),
        "inception3b": (256, 128, 128, 192, 32, 96, 64),
        "inception4a": (480, 192, 96, 208, 16, 48, 64),
        "inception4b": (512, 160, 112, 224, 24, 64, 64),
        "inception4c": (512, 128, 128, 256, 24, 64, 64),
        "inception4d": (512, 112, 144, 288, 32, 64, 64),
        "inception4e": (528, 256, 160, 320, 32, 128, 128),
        "inception5a": (832, 256, 160, 320, 32, 128, 128),
        "inception5b": (832, 384, 192, 384, 48, 128, 128),
    }

    def __init__(self, num_classes: int, o: BuildOptions):
        super().__init__()
        self.conv1 = BasicConv2d(o, o.in_chans, 64, 7, 2)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(o, 64, 64, 1)
        self.conv3 = BasicConv2d(o, 64, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        for name, args in self.INCEPTIONS.items():
            setattr(self, name, Inception(o, *args))
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.num_features = 1024
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = o.drop(0.2 if o.retain_head else 0.0)
        self.fc = nn.Linear(1024, num_classes)
        self.head_names = ("fc",)
        self.trunk_names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                            "maxpool3", *(f"inception4{c}" for c in "abcde"), "maxpool4", "inception5a",
                            "inception5b"]
        self.block_names = [["conv1"], ["conv2", "conv3"], ["inception3a", "inception3b"],
                            [f"inception4{c}" for c in "abcde"], ["inception5a", "inception5b"]]
        init_weights(self)

    def forward_head(self, x):
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


class Fire(nn.Module):
    def __init__(self, o: BuildOptions, cin, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = o.conv(cin, squeeze, 1)
        self.squeeze_bn = o.norm(squeeze)
        self.squeeze_activation = o.act()
        self.expand1x1 = o.conv(squeeze, expand1x1, 1)
        self.expand1x1_bn = o.norm(expand1x1)
        self.expand1x1_activation = o.act()
        self.expand3x3 = o.conv(squeeze, expand3x3, 3)
        self.expand3x3_bn = o.norm(expand3x3)
        self.expand3x3_activation = o.act()

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze_bn(self.squeeze(x)))
        return torch.cat([
            self.expand1x1_activation(self.expand1x1_bn(self.expand1x1(x))),
            self.expand3x3_activation(self.expand3x3_bn(self.expand3x3(x))),
        ], 1)


class SqueezeNet(Backbone):
    """SqueezeNet 1.0 (the paper's and TAO's fire2-fire9); retain_head keeps its conv classifier.

    Max-pools are padded ('same', as TAO's) so that inputs down to 16 px still reach the head.
    """

    FIRES = ((96, 16, 64, 64), (128, 16, 64, 64), (128, 32, 128, 128), (256, 32, 128, 128),
             (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), (512, 64, 256, 256))
    POOL_AFTER = (2, 6)  # max-pool after fire4 and fire8

    def __init__(self, num_classes: int, o: BuildOptions):
        super().__init__()
        stem = [o.conv(o.in_chans, 96, 7, 2, padding=0)]
        stem += [o.norm(96)] if o.use_batch_norm else []
        stem += [o.act(), nn.MaxPool2d(3, 2, padding=1)]
        features = list(stem)
        names = [[f"features.{i}" for i in range(len(stem))]]
        for i, args in enumerate(self.FIRES):
            names.append([f"features.{len(features)}"])
            features.append(Fire(o, *args))
            if i in self.POOL_AFTER:
                features.append(nn.MaxPool2d(3, 2, padding=1))
        self.features = nn.Sequential(*features)
        self.num_features = 512
        if o.retain_head:
            self.classifier = nn.Sequential(o.drop(0.5), nn.Conv2d(512, num_classes, 1),
                                            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(o.drop(1e-3), nn.Linear(512, num_classes))
        self.head_names = ("classifier.1",)
        self.trunk_names = [f"features.{i}" for i in range(len(features))]
        self.block_names = names
        init_weights(self)

    def forward_head(self, x):
        if isinstance(self.head(), nn.Conv2d):  # the retained conv classifier pools last
            return torch.flatten(self.classifier(x), 1)
        return self.classifier(torch.flatten(self.avgpool(x), 1))
