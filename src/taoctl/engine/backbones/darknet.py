"""DarkNet 19/53 (YOLOv2/v3 backbones), CSPDarkNet 19/53 (YOLOv4) and CSPDarkNet-tiny
(YOLOv4-tiny), laid out as TAO's.

Blocks: 0 is the first 3x3 conv, 1-5 the five stages that follow (TAO's numbering). The default activation
is TAO's leaky ReLU (alpha 0.1). ``retain_head`` keeps DarkNet's own classifier, a 1x1 conv
to the classes followed by global average pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import Backbone, BuildOptions, init_weights


class Residual(nn.Module):
    """1x1 squeeze then 3x3 conv, added to the input."""

    def __init__(self, o: BuildOptions, channels, hidden):
        super().__init__()
        self.conv1 = o.conv_norm_act(channels, hidden, 1)
        self.conv2 = o.conv_norm_act(hidden, channels, 3)

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class CSPStage(nn.Module):
    """Cross-stage-partial stage: one half passes by, the other runs ``blocks``, then both merge."""

    def __init__(self, o: BuildOptions, cout, hidden, blocks: nn.Module, down: nn.Module):
        super().__init__()
        self.down = down
        self.part1 = o.conv_norm_act(cout, hidden, 1)  # the bypass (TAO's "z")
        self.part2 = o.conv_norm_act(cout, hidden, 1)
        self.blocks = blocks
        self.partial_trans = o.conv_norm_act(hidden, hidden, 1)
        self.final_trans = o.conv_norm_act(2 * hidden, cout, 1)

    def forward(self, x):
        x = self.down(x)
        bypass = self.part1(x)
        x = self.partial_trans(self.blocks(self.part2(x)))
        return self.final_trans(torch.cat([x, bypass], 1))


def _darknet19_stages(o: BuildOptions):
    # Each stage: max-pool then 3x3 / 1x1 convs alternating (YOLOv2's Darknet-19).
    spec = ((64,), (128, 64, 128), (256, 128, 256), (512, 256, 512, 256, 512),
            (1024, 512, 1024, 512, 1024))
    stages, cin = [], 32
    for widths in spec:
        layers = [nn.MaxPool2d(2, 2, ceil_mode=True)]
        for i, w in enumerate(widths):
            layers.append(o.conv_norm_act(cin, w, 3 if i % 2 == 0 else 1))
            cin = w
        stages.append(nn.Sequential(*layers))
    return stages, cin


def _darknet53_stages(o: BuildOptions):
    stages, cin = [], 32
    for width, repeats in zip((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4)):
        layers = [o.conv_norm_act(cin, width, 3, 2)]
        layers += [Residual(o, width, width // 2) for _ in range(repeats)]
        stages.append(nn.Sequential(*layers))
        cin = width
    return stages, cin


def _cspdarknet53_stages(o: BuildOptions):
    stages, cin = [], 32
    for i, (width, repeats) in enumerate(zip((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4))):
        hidden = width if i == 0 else width // 2  # the first stage keeps full width (YOLOv4)
        blocks = nn.Sequential(*[Residual(o, hidden, hidden // 2 if i == 0 else hidden)
                                 for _ in range(repeats)])
        down = o.conv_norm_act(cin, width, 3, 2)
        stages.append(CSPStage(o, width, hidden, blocks, down))
        cin = width
    return stages, cin


def _cspdarknet19_stages(o: BuildOptions):
    stages = [nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True), o.conv_norm_act(32, 64, 3))]
    cin = 64
    for width, pairs in zip((128, 256, 512, 1024), (1, 1, 2, 2)):
        hidden = width // 2
        blocks = nn.Sequential(*[layer for _ in range(pairs) for layer in (
            o.conv_norm_act(hidden, hidden, 1), o.conv_norm_act(hidden, hidden, 3))])
        down = nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True), o.conv_norm_act(cin, width, 3))
        stages.append(CSPStage(o, width, hidden, blocks, down))
        cin = width
    return stages, cin


class CSPTinyBlock(nn.Module):
    """YOLOv4-tiny's block: the second half of a 3x3 conv's channels runs two more 3x3 convs,
    whose outputs are fused by a 1x1 conv, joined to the whole first conv and max-pooled.

    The first conv is held as its two halves (``conv0a``, ``conv0b``: the same function as one
    conv followed by a channel split) so that pruning can narrow each half on its own.
    """

    def __init__(self, o: BuildOptions, cin, width):
        super().__init__()
        self.conv0a = o.conv_norm_act(cin, width // 2, 3)
        self.conv0b = o.conv_norm_act(cin, width // 2, 3)
        self.conv1 = o.conv_norm_act(width // 2, width // 2, 3)
        self.conv2 = o.conv_norm_act(width // 2, width // 2, 3)
        self.conv3 = o.conv_norm_act(width, width, 1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)

    def forward(self, x):
        second = self.conv0b(x)
        part = self.conv1(second)
        fused = self.conv3(torch.cat([self.conv2(part), part], 1))
        return self.pool(torch.cat([self.conv0a(x), second, fused], 1))


def _cspdarknet_tiny_stages(o: BuildOptions):
    # The stem (32, stride 2) is shared; then a strided 64 conv, three tiny CSP blocks, a 3x3 512.
    stages = [o.conv_norm_act(32, 64, 3, 2)]
    cin = 64
    for width in (64, 128, 256):
        stages.append(CSPTinyBlock(o, cin, width))
        cin = 2 * width
    stages.append(o.conv_norm_act(cin, 512, 3))
    return stages, 512


STAGES = {("darknet", 19): _darknet19_stages, ("darknet", 53): _darknet53_stages,
          ("cspdarknet", 19): _cspdarknet19_stages, ("cspdarknet", 53): _cspdarknet53_stages,
          ("cspdarknet_tiny", None): _cspdarknet_tiny_stages}


class DarkNet(Backbone):
    def __init__(self, family: str, n_layers: int | None, num_classes: int, o: BuildOptions):
        super().__init__()
        # YOLOv4-tiny halves the resolution in its first conv already.
        self.stem = o.conv_norm_act(o.in_chans, 32, 3, 2 if family == "cspdarknet_tiny" else 1)
        stages, cin = STAGES[family, n_layers](o)
        for i, stage in enumerate(stages):
            setattr(self, f"stage{i + 1}", stage)
        self.num_features = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if o.retain_head:
            self.classifier = nn.Sequential(o.drop(0.0), nn.Conv2d(cin, num_classes, 1))
        else:
            self.classifier = nn.Sequential(o.drop(0.0), nn.Linear(cin, num_classes))
        self.head_names = ("classifier.1",)
        self.trunk_names = ["stem"] + [f"stage{i + 1}" for i in range(len(stages))]
        self.block_names = [[name] for name in self.trunk_names]
        init_weights(self)

    def forward_head(self, x):
        if isinstance(self.head(), nn.Conv2d):
            return torch.flatten(self.avgpool(self.classifier(x)), 1)
        return self.classifier(torch.flatten(self.avgpool(x), 1))
