"""The backbone registry (torch): every name of ``ARCHS`` bound to the network that builds it.

``taoctl.engine.backbones`` re-exports what is public here (``create_model``, ``create_features``,
``list_models``), importing this module, and torch with it, only when one of them is first used.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from taoctl.errors import TaoctlError

from . import ARCHS, parse_input_image_size, resolve_arch
from ._base import Backbone, BuildOptions, make_activation
from .features import FeatureBackbone


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


def register(entry: ModelEntry) -> None:
    # The spec validators resolve arch names through ARCHS without importing torch: a network
    # missing there would be refused by `spec check` although it builds.
    if ARCHS.get(entry.name) != (entry.family, entry.n_layers):
        raise ValueError(f"backbone {entry.name!r} ({entry.family}, n_layers {entry.n_layers}) is not listed "
                         f"as such in taoctl.engine.backbones.ARCHS")
    _REGISTRY[entry.name] = entry


def list_models(pattern: str = "*") -> list[str]:
    """Names of every registered model matching a shell-style pattern ("resnet*")."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


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
