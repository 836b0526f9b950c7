"""ResNet 10/18/34/50/101 with TAO's options, keyed like torchvision/timm (conv1, layer1.0.conv1, fc).

TAO's two ResNet switches: ``use_pooling`` (max-pool after the stem; without it the first
block of layer1 strides by 2 instead) and ``all_projections`` (every block's shortcut is a
1x1 conv + norm, not only the blocks that change shape). Without it, shortcuts are projected
where the shape changes, as in torchvision (TAO's Keras ResNet also projects layer1's first
block when the shape is kept; its weights could not be used here anyway).
"""

from __future__ import annotations

from torch import nn

from ._base import Backbone, BuildOptions, init_weights

LAYERS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


def _shortcut(o: BuildOptions, cin, cout, stride):
    layers = [o.conv(cin, cout, 1, stride, padding=0)]
    if o.use_batch_norm:
        layers.append(o.norm(cout))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, o: BuildOptions, cin, width, stride):
        super().__init__()
        cout = width
        self.conv1 = o.conv(cin, width, 3, stride)
        self.bn1 = o.norm(width)
        self.relu = o.act()
        self.conv2 = o.conv(width, cout, 3)
        self.bn2 = o.norm(cout)
        self.relu2 = o.act()
        needs = stride != 1 or cin != cout or o.all_projections
        self.downsample = _shortcut(o, cin, cout, stride) if needs else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, o: BuildOptions, cin, width, stride):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = o.conv(cin, width, 1, padding=0)
        self.bn1 = o.norm(width)
        self.conv2 = o.conv(width, width, 3, stride)
        self.bn2 = o.norm(width)
        self.conv3 = o.conv(width, cout, 1, padding=0)
        self.bn3 = o.norm(cout)
        self.relu = o.act()
        self.relu2 = o.act()
        self.relu3 = o.act()
        needs = stride != 1 or cin != cout or o.all_projections
        self.downsample = _shortcut(o, cin, cout, stride) if needs else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet(Backbone):
    def __init__(self, n_layers: int, num_classes: int, o: BuildOptions):
        super().__init__()
        self.arch = f"resnet{n_layers}"
        kind, repeats = LAYERS[n_layers]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = o.conv(o.in_chans, 64, 7, 2, padding=3)
        self.bn1 = o.norm(64)
        self.relu = o.act()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if o.use_pooling else nn.Identity()
        cin = 64
        for i, (n, width) in enumerate(zip(repeats, (64, 128, 256, 512))):
            first_stride = 1 if i == 0 and o.use_pooling else 2
            blocks = []
            for j in range(n):
                blocks.append(block(o, cin, width, first_stride if j == 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = o.drop(0.0)
        self.fc = nn.Linear(cin, num_classes)
        self.head_names = ("fc",)
        self.trunk_names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        self.block_names = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        init_weights(self)

    def forward_head(self, x):
        return self.fc(self.drop(self.avgpool(x).flatten(1)))
