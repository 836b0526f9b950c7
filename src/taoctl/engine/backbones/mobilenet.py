"""MobileNet v1 and v2. v2 is keyed like torchvision (features.N.conv..., classifier.1) so its
ImageNet state dict loads as is; v1 has no torchvision counterpart and uses the same layout."""

from __future__ import annotations

from torch import nn

from ._base import Backbone, BuildOptions, init_weights, make_divisible


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, linear project 1x1; residual when the shape is kept.

    With TAO's ``all_projections`` the residual goes through a 1x1 conv (``shortcut``), so
    that pruning may change every block's width independently.
    """

    def __init__(self, o: BuildOptions, cin, cout, stride, expand_ratio):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand_ratio != 1:
            layers.append(o.conv_norm_act(cin, hidden, 1))
        layers.append(o.conv_norm_act(hidden, hidden, 3, stride, groups=hidden))
        layers.append(o.conv(hidden, cout, 1, padding=0))
        if o.use_batch_norm:
            layers.append(o.norm(cout))
        self.conv = nn.Sequential(*layers)
        self.shortcut = (nn.Conv2d(cin, cout, 1, bias=False)
                         if self.use_res_connect and o.all_projections else nn.Identity())

    def forward(self, x):
        return self.shortcut(x) + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(Backbone):
    # expansion t, channels c, repeats n, first stride s (the paper's table 2)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int, o: BuildOptions, width_mult: float = 1.0):
        super().__init__()
        self.arch = "mobilenet_v2"
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features = [o.conv_norm_act(o.in_chans, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(o, cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(o.conv_norm_act(cin, last, 1))
        self.features = nn.Sequential(*features)
        self.num_features = last
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(o.drop(0.2), nn.Linear(last, num_classes))
        self.head_names = ("classifier.1",)
        self.trunk_names = [f"features.{i}" for i in range(len(features))]
        # One TAO block per features entry: stem, the 17 inverted residuals, the 1x1 conv.
        self.block_names = [[name] for name in self.trunk_names]
        init_weights(self)

    def forward_head(self, x):
        return self.classifier(self.avgpool(x).flatten(1))


class MobileNetV1(Backbone):
    # (output channels, stride) of the 13 depthwise-separable blocks (the paper's table 1)
    SETTINGS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int, o: BuildOptions, width_mult: float = 1.0):
        super().__init__()
        self.arch = "mobilenet_v1"
        cin = int(32 * width_mult)
        features = [o.conv_norm_act(o.in_chans, cin, 3, 2)]
        for c, s in self.SETTINGS:
            cout = int(c * width_mult)
            features.append(nn.Sequential(
                o.conv_norm_act(cin, cin, 3, s, groups=cin),
                o.conv_norm_act(cin, cout, 1),
            ))
            cin = cout
        self.features = nn.Sequential(*features)
        self.num_features = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(o.drop(1e-3), nn.Linear(cin, num_classes))
        self.head_names = ("classifier.1",)
        self.trunk_names = [f"features.{i}" for i in range(len(features))]
        self.block_names = [[name] for name in self.trunk_names]
        init_weights(self)

    def forward_head(self, x):
        return self.classifier(self.avgpool(x).flatten(1))
