"""Pieces every backbone shares: TAO's model options, activations, and the Backbone base class.

TAO's ``model_config`` options (use_batch_norm, use_bias, activation, batch_norm_config ...)
apply to every network, so the layer factories that honour them live here and each
architecture builds its layers through ``BuildOptions`` instead of calling nn.Conv2d directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from taoctl.errors import TaoctlError, did_you_mean


class Mish(nn.Module):
    """x * tanh(softplus(x)) written out, so ONNX opsets without a Mish op still export it."""

    def forward(self, x):
        return x * torch.tanh(nn.functional.softplus(x))


# name -> (factory(params), parameter names it accepts). TAO's names first, common aliases after.
_ACTIVATIONS = {
    "relu": (lambda p: nn.ReLU(inplace=True), ()),
    "relu6": (lambda p: nn.ReLU6(inplace=True), ()),
    "swish": (lambda p: nn.SiLU(inplace=True), ()),
    "silu": (lambda p: nn.SiLU(inplace=True), ()),
    "mish": (lambda p: Mish(), ()),
    "leaky_relu": (lambda p: nn.LeakyReLU(p.get("alpha", 0.1), inplace=True), ("alpha",)),
    "elu": (lambda p: nn.ELU(p.get("alpha", 1.0), inplace=True), ("alpha",)),
    "gelu": (lambda p: nn.GELU(), ()),
    "hard_swish": (lambda p: nn.Hardswish(inplace=True), ()),
    "sigmoid": (lambda p: nn.Sigmoid(), ()),
    "tanh": (lambda p: nn.Tanh(), ()),
    "softplus": (lambda p: nn.Softplus(), ()),
}

ACTIVATION_TYPES = tuple(_ACTIVATIONS)


def make_activation(activation_type: str, parameters: dict | None = None) -> nn.Module:
    """Build TAO's ``activation { activation_type: ... activation_parameters {...} }``."""
    name = activation_type.strip().lower()
    if name not in _ACTIVATIONS:
        raise TaoctlError(
            f"activation_type {activation_type!r} is not supported ({', '.join(ACTIVATION_TYPES)})"
            + did_you_mean(name, ACTIVATION_TYPES)
        )
    factory, accepted = _ACTIVATIONS[name]
    parameters = dict(parameters or {})
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise TaoctlError(
            f"activation_parameters {', '.join(unknown)} not used by {name} (accepted: {allowed})"
        )
    return factory(parameters)


@dataclass
class BuildOptions:
    """TAO model_config options as the layer factories need them.

    ``bn_momentum`` is PyTorch's convention (weight of the new batch); TAO/Keras's
    ``batch_norm_config.momentum`` m is converted by ``create_model`` as 1 - m.
    """

    in_chans: int = 3
    input_size: tuple[int, int] = (224, 224)  # H, W: fixes the flatten width of retained fc heads
    use_batch_norm: bool = True
    use_bias: bool = False
    all_projections: bool = False
    use_pooling: bool = True
    retain_head: bool = False
    dropout: float | None = None
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    activation_type: str = "relu"
    activation_parameters: dict = field(default_factory=dict)

    def act(self) -> nn.Module:
        return make_activation(self.activation_type, self.activation_parameters)

    def norm(self, channels: int) -> nn.Module:
        if not self.use_batch_norm:
            return nn.Identity()
        return nn.BatchNorm2d(channels, eps=self.bn_eps, momentum=self.bn_momentum)

    def conv(self, cin, cout, kernel, stride=1, padding=None, groups=1, bias=None) -> nn.Conv2d:
        if padding is None:
            padding = (kernel - 1) // 2
        return nn.Conv2d(
            cin, cout, kernel, stride, padding, groups=groups,
            bias=self.use_bias if bias is None else bias,
        )

    def conv_norm_act(self, cin, cout, kernel, stride=1, groups=1, act=True) -> nn.Sequential:
        """conv, norm, activation as one Sequential (keys ``.0`` conv, ``.1`` norm), torchvision's layout."""
        layers = [self.conv(cin, cout, kernel, stride, groups=groups)]
        if self.use_batch_norm:
            layers.append(self.norm(cout))
        if act:
            layers.append(self.act())
        return nn.Sequential(*layers)

    def drop(self, default: float) -> nn.Module:
        """Dropout before the classifier: TAO's ``dropout`` when given, else the network's own rate."""
        rate = default if self.dropout is None else self.dropout
        return nn.Dropout(rate) if rate > 0 else nn.Identity()


class Backbone(nn.Module):
    """A classification network with TAO's freezing rules and named layer groups.

    Subclasses set ``head_name`` (dotted name of the last layer, the one re-initialised
    for a new class count and left alone by pruning), ``block_names`` (for each TAO block
    index, the dotted names of the modules it contains; index 0 is the stem, empty where TAO
    numbers from 1) and ``num_features`` (channels of the last feature map).
    ``forward_features`` runs everything up to the classifier, ``forward`` the whole network.
    ``create_model`` also records ``input_shape`` (C, H, W), ``num_classes`` and
    ``build_options`` on the instance.
    """

    arch: str = ""
    head_name: str = ""
    block_names: list[list[str]]

    def __init__(self):
        super().__init__()
        self.block_names = []
        self.frozen_blocks: tuple[int, ...] = ()
        self.freeze_bn = False

    # -- structure ---------------------------------------------------------------------------
    def blocks(self) -> list[list[nn.Module]]:
        return [[self.get_submodule(n) for n in names] for names in self.block_names]

    def head(self) -> nn.Module:
        return self.get_submodule(self.head_name)

    def forward_features(self, x):
        raise NotImplementedError

    def forward_head(self, x):
        raise NotImplementedError

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    # -- freezing ----------------------------------------------------------------------------
    def freeze_blocks(self, indices) -> None:
        """Stop gradients through the listed TAO blocks; their BatchNorms also stop updating."""
        count = len(self.block_names)
        for i in indices:
            if not 0 <= int(i) < count:
                raise TaoctlError(
                    f"freeze_blocks {i} is not a block of {self.arch} (blocks 0-{count - 1})"
                )
        self.frozen_blocks = tuple(sorted({int(i) for i in indices}))
        for i in self.frozen_blocks:
            for module in self.blocks()[i]:
                for p in module.parameters():
                    p.requires_grad_(False)
        self.train(self.training)

    def set_freeze_bn(self, value: bool) -> None:
        """TAO's freeze_bn: every BatchNorm keeps its statistics and affine weights fixed."""
        self.freeze_bn = bool(value)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            frozen = [m for i in self.frozen_blocks for m in self.blocks()[i]]
            for root in ([self] if self.freeze_bn else frozen):
                for m in root.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of divisor, never dropping below 90% (MobileNet/EfficientNet rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def init_weights(model: nn.Module) -> None:
    """Kaiming for convs, unit BatchNorms, small normal for linears (torchvision's choices)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
