"""One registry of classification backbones, timm-style, driven by TAO's ``model_config``.

    create_model("resnet", num_classes=2, n_layers=18, input_image_size="3,224,224",
                 all_projections=True, freeze_blocks=[0, 1])
    list_models()            # ['alexnet', 'cspdarknet19', ..., 'resnet18', ..., 'vgg19']

    create_features("resnet18", strides=(8, 16, 32), input_image_size="3,384,1248")

``arch`` takes TAO's spellings: a family with ``n_layers`` ("resnet" + 18), a full name
("resnet18", "efficientnet_b0"), or the "family:variant" form TAO's detection specs use
("resnet:18", "efficientnet:b1"). Every model is a :class:`Backbone`: ``trunk_names`` lists
the modules its features pass through in order, ``feature_info()`` the deepest of them at
each stride, ``block_names`` the modules of each TAO block (index 0 the stem; what
``freeze_blocks`` counts) and ``head_names`` its final layer. Option defaults build the original
published network (batch norm, no conv bias, max-pool stem, the network's own activation), so
torchvision/timm ImageNet weights load onto ``create_model(name)`` unchanged.
``create_features`` builds a detector's :class:`FeatureBackbone` from the same networks.

Which options change which networks: ``all_projections`` applies to ResNet (every shortcut
a 1x1 conv + norm) and MobileNet v2 (every residual through a 1x1 conv), ``use_pooling`` to
ResNet and VGG (max-pool, or strided convs without it);
``retain_head`` keeps VGG's/AlexNet's fc6-fc7 and SqueezeNet's/DarkNet's convolutional
classifier (the others' original head already is pool + dense); ``activation`` replaces every
hidden activation of any network; ``dropout`` replaces the rate before the last layer.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from taoctl.errors import TaoctlError, did_you_mean

from ._base import ACTIVATION_TYPES, Backbone, BuildOptions, FeatureLevel, TrunkNetwork, make_activation
from .features import FeatureBackbone

__all__ = ["Backbone", "BuildOptions", "ACTIVATION_TYPES", "FeatureBackbone", "FeatureLevel", "TrunkNetwork",
           "create_features", "create_model", "list_models", "parse_input_image_size", "resolve_arch",
           "make_activation"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    n_layers: int | None
    build: Callable[[int, BuildOptions], Backbone]
    activation: str = "relu"
    activation_parameters: tuple = ()
    bn_eps: float = 1e-5
    use_bias: bool = False  # the original network's choices, used when the caller gives none
    use_batch_norm: bool = True


_REGISTRY: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, dict[int, str]] = {}  # family -> {n_layers: model name}


def register(entry: ModelEntry) -> None:
    _REGISTRY[entry.name] = entry
    if entry.n_layers is not None:
        _FAMILIES.setdefault(entry.family, {})[entry.n_layers] = entry.name


def list_models(pattern: str = "*") -> list[str]:
    """Names of every registered model matching a shell-style pattern ("resnet*")."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def resolve_arch(arch: str, n_layers: int | None = None) -> str:
    """Turn TAO's (arch, n_layers) into a registered model name, or say why it cannot."""
    name = str(arch).strip().lower().replace("-", "_")
    if ":" in name:  # "resnet:18", "efficientnet:b1", "vgg:16"
        family, _, variant = name.partition(":")
        if family in _FAMILIES and variant.isdigit():
            variant_layers = int(variant)
            if n_layers and int(n_layers) != variant_layers:
                raise TaoctlError(f"arch {arch!r} contradicts n_layers {n_layers}")
            name, n_layers = family, variant_layers
        else:
            name = f"{family}_{variant}"
    n_layers = int(n_layers) if n_layers else None
    if name in _FAMILIES:
        choices = _FAMILIES[name]
        listed = ", ".join(str(k) for k in sorted(choices))
        if n_layers is None:
            raise TaoctlError(f"arch {name} needs n_layers ({listed})")
        if n_layers not in choices:
            raise TaoctlError(f"n_layers {n_layers} is not available for {name} ({listed})")
        return choices[n_layers]
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        if n_layers is not None and n_layers != entry.n_layers:
            if entry.n_layers is None:
                raise TaoctlError(f"n_layers {n_layers} does not apply to {name} (leave it out)")
            raise TaoctlError(f"arch {name} contradicts n_layers {n_layers}")
        return name
    known = sorted(set(_REGISTRY) | set(_FAMILIES))
    raise TaoctlError(f"unknown arch {arch!r}" + did_you_mean(name, known)
                      + f" (known: {', '.join(sorted(_FAMILIES) + list_models())})")


def parse_input_image_size(value) -> tuple[int, int, int]:
    """TAO's ``input_image_size: "C,H,W"`` (C is 1 or 3, H and W at least 16) as a tuple."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    else:
        parts = list(value)
    try:
        c, h, w = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise TaoctlError(f'input_image_size {value!r} must be "C,H,W", e.g. "3,224,224"') from None
    if c not in (1, 3):
        raise TaoctlError(f"input_image_size {value!r}: channels must be 1 or 3, got {c}")
    if h < 16 or w < 16:
        raise TaoctlError(f"input_image_size {value!r}: height and width must be at least 16")
    return c, h, w


def _field(obj, name, default=None):
    """Read a field from a dict or a protobuf message (the spec's batch_norm_config/activation)."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def create_model(
    arch: str,
    num_classes: int = 1000,
    n_layers: int | None = None,
    *,
    input_image_size=None,
    in_chans: int | None = None,
    use_batch_norm: bool | None = None,
    use_bias: bool | None = None,
    all_projections: bool = False,
    use_pooling: bool = True,
    retain_head: bool = False,
    freeze_blocks=(),
    freeze_bn: bool = False,
    dropout: float | None = None,
    batch_norm_config=None,
    activation=None,
) -> Backbone:
    """Build a TAO classification network; every TAO model_config option is a keyword.

    batch_norm_config: {"momentum": m, "epsilon": e} in TAO/Keras convention (moving average
      keeps m of the old value; 0 means the default). activation: a type name or
      {"activation_type": ..., "activation_parameters": {...}}; None keeps the network's own.
    Both also accept the protobuf messages of a parsed spec. use_batch_norm/use_bias left as
    None follow the original network (VGG, AlexNet, SqueezeNet: biases and no batch norm).
    """
    name = resolve_arch(arch, n_layers)
    entry = _REGISTRY[name]
    if int(num_classes) < 1:
        raise TaoctlError(f"num_classes must be at least 1, got {num_classes}")
    if input_image_size is not None:
        shape = parse_input_image_size(input_image_size)
        if in_chans is not None and in_chans != shape[0]:
            raise TaoctlError(f"in_chans {in_chans} contradicts input_image_size {input_image_size!r}")
    else:
        shape = (in_chans or 3, 224, 224)
        if shape[0] not in (1, 3):
            raise TaoctlError(f"in_chans must be 1 or 3, got {shape[0]}")

    momentum = float(_field(batch_norm_config, "momentum", 0.0) or 0.0)
    epsilon = float(_field(batch_norm_config, "epsilon", 0.0) or 0.0)
    if not 0.0 <= momentum < 1.0:
        raise TaoctlError(f"batch_norm_config momentum must be in [0, 1), got {momentum}")
    if isinstance(activation, str) or activation is None:
        act_type, act_params = activation or "", {}
    else:
        act_type = _field(activation, "activation_type", "") or ""
        act_params = dict(_field(activation, "activation_parameters", {}) or {})
    if not act_type:
        act_type, act_params = entry.activation, dict(entry.activation_parameters)
    make_activation(act_type, act_params)  # validate once, before building hundreds of layers

    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise TaoctlError(f"dropout must be in [0, 1), got {dropout}")
    options = BuildOptions(
        in_chans=shape[0],
        input_size=shape[1:],
        use_batch_norm=entry.use_batch_norm if use_batch_norm is None else bool(use_batch_norm),
        use_bias=entry.use_bias if use_bias is None else bool(use_bias),
        all_projections=bool(all_projections),
        use_pooling=bool(use_pooling),
        retain_head=bool(retain_head),
        dropout=None if dropout is None else float(dropout),
        bn_eps=epsilon or entry.bn_eps,
        bn_momentum=(1.0 - momentum) if momentum else 0.1,
        activation_type=act_type,
        activation_parameters=act_params,
    )
    model = entry.build(int(num_classes), options)
    model.arch = name
    model.input_shape = shape
    model.num_classes = int(num_classes)
    model.freeze_blocks(list(freeze_blocks or ()))
    model.set_freeze_bn(freeze_bn)
    return model


def create_features(
    arch: str,
    strides=(8, 16, 32),
    n_layers: int | None = None,
    *,
    freeze_blocks=(),
    freeze_bn: bool = False,
    **options,
) -> FeatureBackbone:
    """The feature maps of ``arch`` at ``strides``, from a network cut after the deepest of them.

    ``options`` are create_model's model_config keywords (input_image_size, all_projections,
    activation ...); those that only shape a classifier head (retain_head, dropout) have no
    effect. freeze_blocks counts the classifier's blocks; blocks past the cut are refused.
    """
    features = FeatureBackbone(create_model(arch, 1, n_layers, **options), strides)
    features.freeze_blocks(list(freeze_blocks or ()))
    features.set_freeze_bn(freeze_bn)
    return features


def _register_all() -> None:
    from . import darknet, efficientnet, googlenet, mobilenet, resnet, vgg

    for n in resnet.LAYERS:
        register(ModelEntry(f"resnet{n}", "resnet", n,
                            lambda nc, o, n=n: resnet.ResNet(n, nc, o)))
    for n in vgg.VGG_GROUPS:
        register(ModelEntry(f"vgg{n}", "vgg", n, lambda nc, o, n=n: vgg.VGG(n, nc, o),
                            use_bias=True, use_batch_norm=False))
    register(ModelEntry("alexnet", "alexnet", None, vgg.AlexNet,
                        use_bias=True, use_batch_norm=False))
    register(ModelEntry("googlenet", "googlenet", None, googlenet.GoogLeNet, bn_eps=1e-3))
    register(ModelEntry("squeezenet", "squeezenet", None, googlenet.SqueezeNet,
                        use_bias=True, use_batch_norm=False))
    register(ModelEntry("mobilenet_v1", "mobilenet_v1", None, mobilenet.MobileNetV1,
                        activation="relu6", bn_eps=1e-3))
    register(ModelEntry("mobilenet_v2", "mobilenet_v2", None, mobilenet.MobileNetV2,
                        activation="relu6"))
    for family, n in darknet.STAGES:
        register(ModelEntry(family if n is None else f"{family}{n}", family, n,
                            lambda nc, o, f=family, n=n: darknet.DarkNet(f, n, nc, o),
                            activation="leaky_relu", activation_parameters=(("alpha", 0.1),)))
    for name, (_, _, _, lite) in efficientnet.VARIANTS.items():
        register(ModelEntry(name, "efficientnet", None,
                            lambda nc, o, name=name: efficientnet.EfficientNet(name, nc, o),
                            activation="relu6" if lite else "swish", bn_eps=1e-3))


_register_all()
