"""Pieces every backbone shares: TAO's model options, activations, the trunk and the Backbone class.

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


FEATURE_PROBE_SIZE = 128  # px of the image feature_info runs: every network keeps a 4x4 map at stride 32


@dataclass(frozen=True)
class FeatureLevel:
    """One resolution of a network's trunk: the deepest module whose output has ``stride``."""

    module: str  # dotted name of that module
    channels: int
    stride: int


class TrunkNetwork(nn.Module):
    """A network whose features come from applying ``trunk_names`` in order, with TAO's freezing.

    ``trunk_names`` lists the dotted names of the modules ``forward_features`` runs one after
    another (stem to last feature map); since each one's output is a whole feature map, any
    prefix of it is a network of its own (:class:`FeatureBackbone` cuts there).
    ``block_names`` gives, for each TAO block index, the dotted names of the modules it contains
    (index 0 the stem, empty where TAO numbers from 1): what ``freeze_blocks`` counts.
    ``input_shape`` (C, H, W) is set on the instance by create_model / create_features.
    """

    arch: str = ""
    trunk_names: list[str]
    block_names: list[list[str]]

    def __init__(self):
        super().__init__()
        self.trunk_names = []
        self.block_names = []
        self.frozen_blocks: tuple[int, ...] = ()
        self.freeze_bn = False

    def describe(self) -> str:
        """The network as error messages name it."""
        return self.arch

    # -- structure ---------------------------------------------------------------------------
    def blocks(self) -> list[list[nn.Module]]:
        return [[self.get_submodule(n) for n in names] for names in self.block_names]

    def forward_features(self, x):
        # Looked up by name on every call: loading a pruned model file replaces layers in place.
        for name in self.trunk_names:
            x = self.get_submodule(name)(x)
        return x

    def feature_info(self) -> list[FeatureLevel]:
        """For each stride the trunk reaches, the deepest trunk module at it, shallowest first.

        Measured by running the trunk on a zero image of FEATURE_PROBE_SIZE pixels in eval mode
        (BatchNorm statistics stay put), so channel counts stay right after pruning. Strides are
        the nearest power of two: an unpadded 7x7 stride-2 stem maps 128 pixels to 61.
        """
        parameter = next(self.parameters())
        size = FEATURE_PROBE_SIZE
        x = torch.zeros(1, self.input_shape[0], size, size, dtype=parameter.dtype, device=parameter.device)
        levels: dict[int, FeatureLevel] = {}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for name in self.trunk_names:
                    x = self.get_submodule(name)(x)
                    stride = 2 ** round(math.log2(size / x.shape[-1]))
                    levels[stride] = FeatureLevel(name, int(x.shape[1]), stride)
        finally:
            self.train(was_training)
        return list(levels.values())

    # -- freezing ----------------------------------------------------------------------------
    def freeze_blocks(self, indices) -> None:
        """Stop gradients through the listed TAO blocks; their BatchNorms also stop updating."""
        count = len(self.block_names)
        for i in indices:
            if not 0 <= int(i) < count:
                raise TaoctlError(
                    f"freeze_blocks {i} is not a block of {self.describe()} (blocks 0-{count - 1})"
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


class Backbone(TrunkNetwork):
    """A classification network: the trunk, then a head that maps its last feature map to classes.

    ``head_names`` holds the dotted name of the last layer (a classifier has one named head),
    which pretrained loading re-initialises for a new class count and pruning leaves at its
    width; ``num_features`` is the channel count of the last feature map, and create_model
    records ``num_classes``.
    ``forward`` runs ``forward_features`` then ``forward_head``.
    """

    head_names: tuple[str, ...] = ()

    def head(self) -> nn.Module:
        """The classification layer (the classifier's one named head)."""
        return self.get_submodule(self.head_names[0])

    def forward_head(self, x):
        raise NotImplementedError

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


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
