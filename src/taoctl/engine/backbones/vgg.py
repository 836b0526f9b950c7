"""VGG 16/19 and AlexNet, keyed like torchvision (features.N, classifier.N).

``retain_head`` keeps fc6-fc7 as TAO does: the last feature map is flattened as it is, so
fc6's width follows input_image_size (torchvision's ImageNet fc weights fit at 224x224).

TAO numbers VGG's five conv groups 1-5 (there is no block 0) and AlexNet's convs 1-5 and
fc6/fc7 6-7. Without ``use_pooling`` VGG downsamples with a strided first conv in groups 2-5.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Backbone, BuildOptions, init_weights

VGG_GROUPS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)


def _fc_head(options: BuildOptions, in_features: int, hidden: int, num_classes: int,
             dropout_first: bool):
    """The original fc6-fc7-fc8 stack (torchvision's order: VGG drops after, AlexNet before)."""
    drop = options.drop(0.5)
    if dropout_first:  # AlexNet: Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8
        layers = [drop, nn.Linear(in_features, hidden), options.act(), options.drop(0.5),
                  nn.Linear(hidden, hidden), options.act(), nn.Linear(hidden, num_classes)]
    else:  # VGG: fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8
        layers = [nn.Linear(in_features, hidden), options.act(), drop,
                  nn.Linear(hidden, hidden), options.act(), options.drop(0.5),
                  nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


class _Sequential(Backbone):
    """A plain conv stack followed by either TAO's dense head or the retained fc stack."""

    def _finish(self, features, num_features, num_classes, o: BuildOptions, hidden,
                dropout_first):
        self.features = nn.Sequential(*features)
        self.trunk_names = [f"features.{i}" for i in range(len(features))]
        self.num_features = num_features
        if o.retain_head:
            self.avgpool = nn.Identity()
            with torch.no_grad():
                flat = self.features(torch.zeros(1, o.in_chans, *o.input_size)).numel()
            self.classifier = _fc_head(o, flat, hidden, num_classes, dropout_first)
            linears = [i for i, m in enumerate(self.classifier) if isinstance(m, nn.Linear)]
            self.head_names = (f"classifier.{linears[-1]}",)
            # fc6 and fc7 are blocks of their own after the conv blocks.
            self.block_names += [[f"classifier.{i}"] for i in linears[:-1]]
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(o.drop(0.0), nn.Linear(num_features, num_classes))
            self.head_names = ("classifier.1",)
        init_weights(self)

    def forward_head(self, x):
        return self.classifier(torch.flatten(self.avgpool(x), 1))


class VGG(_Sequential):
    def __init__(self, n_layers: int, num_classes: int, o: BuildOptions):
        super().__init__()
        features, names = [], [[]]
        cin = o.in_chans
        for g, (repeat, width) in enumerate(zip(VGG_GROUPS[n_layers], WIDTHS)):
            group = []
            for r in range(repeat):
                stride = 2 if (r == 0 and g > 0 and not o.use_pooling) else 1
                layers = [o.conv(cin, width, 3, stride)]
                layers += [o.norm(width)] if o.use_batch_norm else []
                layers.append(o.act())
                group += [str(len(features) + i) for i in range(len(layers))]
                features += layers
                cin = width
            if o.use_pooling:
                features.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            names.append([f"features.{i}" for i in group])
        self.block_names = names
        self._finish(features, cin, num_classes, o, hidden=4096, dropout_first=False)


class AlexNet(_Sequential):
    # torchvision's single-tower widths, so its ImageNet weights fit.
    CONVS = ((64, 11, 4), (192, 5, 1), (384, 3, 1), (256, 3, 1), (256, 3, 1))
    POOL_AFTER = (0, 1, 4)

    def __init__(self, num_classes: int, o: BuildOptions):
        super().__init__()
        features, names = [], [[]]
        cin = o.in_chans
        for i, (width, kernel, stride) in enumerate(self.CONVS):
            # First conv padded as torchvision; pools padded like TAO's 'same' so 16 px inputs work.
            layers = [o.conv(cin, width, kernel, stride, padding=2 if i < 2 else 1)]
            layers += [o.norm(width)] if o.use_batch_norm else []
            layers.append(o.act())
            names.append([f"features.{len(features) + j}" for j in range(len(layers))])
            features += layers
            if i in self.POOL_AFTER:
                features.append(nn.MaxPool2d(3, 2, padding=1))
            cin = width
        self.block_names = names
        self._finish(features, cin, num_classes, o, hidden=4096, dropout_first=True)
