"""EfficientNet B0-B7 and EfficientNet-Lite0, keyed like torchvision
(features.0 stem, features.1-7 stages of MBConv ``.block``, features.8 head conv, classifier.1).

Lite variants (for mobile/int8) drop squeeze-excitation, use ReLU6 and keep the stem and
head widths fixed. TAO's blocks: 0 stem, 1-7 the stages, 8 the 1x1 head conv.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._base import Backbone, BuildOptions, init_weights, make_divisible

# expand ratio, kernel, stride, in, out, repeats (the paper's table 1)
STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

# name: (width multiplier, depth multiplier, dropout before the classifier, lite)
VARIANTS = {
    "efficientnet_b0": (1.0, 1.0, 0.2, False), "efficientnet_b1": (1.0, 1.1, 0.2, False),
    "efficientnet_b2": (1.1, 1.2, 0.3, False), "efficientnet_b3": (1.2, 1.4, 0.3, False),
    "efficientnet_b4": (1.4, 1.8, 0.4, False), "efficientnet_b5": (1.6, 2.2, 0.4, False),
    "efficientnet_b6": (1.8, 2.6, 0.5, False), "efficientnet_b7": (2.0, 3.1, 0.5, False),
    "efficientnet_lite0": (1.0, 1.0, 0.2, True),
}

STOCHASTIC_DEPTH = 0.2  # drop-connect rate of the last block; earlier blocks scale linearly


class StochasticDepth(nn.Module):
    """Drop the residual branch for a random subset of samples while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class SqueezeExcitation(nn.Module):
    def __init__(self, o: BuildOptions, channels, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = o.act()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


class MBConv(nn.Module):
    def __init__(self, o: BuildOptions, cin, cout, kernel, stride, expand, se: bool, drop: float):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers.append(o.conv_norm_act(cin, hidden, 1))
        layers.append(o.conv_norm_act(hidden, hidden, kernel, stride, groups=hidden))
        if se:
            layers.append(SqueezeExcitation(o, hidden, max(1, cin // 4)))
        layers.append(o.conv_norm_act(hidden, cout, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x):
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_res_connect else out


class EfficientNet(Backbone):
    def __init__(self, name: str, num_classes: int, o: BuildOptions):
        super().__init__()
        width, depth, dropout, lite = VARIANTS[name]
        stem = 32 if lite else make_divisible(32 * width)
        head = 1280 if lite else make_divisible(1280 * width)
        repeats = [int(math.ceil(depth * s[5])) for s in STAGES]
        total, index = sum(repeats), 0
        features = [o.conv_norm_act(o.in_chans, stem, 3, 2)]
        cin = stem
        for (expand, kernel, stride, _, out, _), n in zip(STAGES, repeats):
            cout = make_divisible(out * width)
            stage = []
            for i in range(n):
                drop = STOCHASTIC_DEPTH * index / total
                stage.append(MBConv(o, cin, cout, kernel, stride if i == 0 else 1, expand,
                                    se=not lite, drop=drop))
                cin, index = cout, index + 1
            features.append(nn.Sequential(*stage))
        features.append(o.conv_norm_act(cin, head, 1))
        self.features = nn.Sequential(*features)
        self.num_features = head
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(o.drop(dropout), nn.Linear(head, num_classes))
        self.head_names = ("classifier.1",)
        self.trunk_names = [f"features.{i}" for i in range(len(features))]
        self.block_names = [[name] for name in self.trunk_names]
        init_weights(self)

    def forward_head(self, x):
        return self.classifier(torch.flatten(self.avgpool(x), 1))
