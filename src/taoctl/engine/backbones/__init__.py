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

This module itself is torch-free: ``ARCHS`` (every registered name with its family and
n_layers), ``resolve_arch`` and ``parse_input_image_size`` are what the spec validators use
(``taoctl spec check`` runs in the launcher, which never imports torch); the networks live in
``registry`` and are imported on first use of ``create_model`` and the other torch names. The
registry refuses a network ``ARCHS`` does not list, and tests/test_spec_agreement.py checks
that every name ``ARCHS`` lists is registered.

Which options change which networks: ``all_projections`` applies to ResNet (every shortcut
a 1x1 conv + norm) and MobileNet v2 (every residual through a 1x1 conv), ``use_pooling`` to
ResNet and VGG (max-pool, or strided convs without it);
``retain_head`` keeps VGG's/AlexNet's fc6-fc7 and SqueezeNet's/DarkNet's convolutional
classifier (the others' original head already is pool + dense); ``activation`` replaces every
hidden activation of any network; ``dropout`` replaces the rate before the last layer.
"""

from __future__ import annotations

import importlib

from taoctl.errors import TaoctlError, did_you_mean

__all__ = ["ARCHS", "ArchError", "Backbone", "BuildOptions", "ACTIVATION_TYPES", "FeatureBackbone", "FeatureLevel",
           "TrunkNetwork", "create_features", "create_model", "list_models", "parse_input_image_size",
           "resolve_arch", "make_activation"]

# Every registered network: name -> (family, n_layers); n_layers None for a network with one depth.
ARCHS: dict[str, tuple[str, int | None]] = {
    **{f"resnet{n}": ("resnet", n) for n in (10, 18, 34, 50, 101)},
    **{f"vgg{n}": ("vgg", n) for n in (16, 19)},
    "alexnet": ("alexnet", None),
    "googlenet": ("googlenet", None),
    "squeezenet": ("squeezenet", None),
    "mobilenet_v1": ("mobilenet_v1", None),
    "mobilenet_v2": ("mobilenet_v2", None),
    **{f"{family}{n}": (family, n) for family in ("darknet", "cspdarknet") for n in (19, 53)},
    "cspdarknet_tiny": ("cspdarknet_tiny", None),
    **{f"efficientnet_b{n}": ("efficientnet", None) for n in range(8)},
    "efficientnet_lite0": ("efficientnet", None),
}

# family -> {n_layers: model name}, for the families chosen by depth (resnet + n_layers 18).
_FAMILIES: dict[str, dict[int, str]] = {}
for name, (family, n_layers) in ARCHS.items():
    if n_layers is not None:
        _FAMILIES.setdefault(family, {})[n_layers] = name
del name, family, n_layers

# What the torch side exports, by the module (in this package) that defines it; imported on first use.
_LAZY = {"create_model": "registry", "create_features": "registry", "list_models": "registry",
         "Backbone": "_base", "BuildOptions": "_base", "ACTIVATION_TYPES": "_base", "FeatureLevel": "_base",
         "TrunkNetwork": "_base", "make_activation": "_base", "FeatureBackbone": "features"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ArchError(TaoctlError):
    """An (arch, n_layers) pair that names no registered network; ``field`` is the one at fault:
    "arch" (an unknown name) or "n_layers" (a depth the family lacks, or one the name contradicts)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def resolve_arch(arch: str, n_layers: int | None = None) -> str:
    """Turn TAO's (arch, n_layers) into a registered model name, or say why it cannot (ArchError)."""
    name = str(arch).strip().lower().replace("-", "_")
    if ":" in name:  # "resnet:18", "efficientnet:b1", "vgg:16"
        family, _, variant = name.partition(":")
        if family in _FAMILIES and variant.isdigit():
            variant_layers = int(variant)
            if n_layers and int(n_layers) != variant_layers:
                raise ArchError(f"arch {arch!r} contradicts n_layers {n_layers}", "n_layers")
            name, n_layers = family, variant_layers
        else:
            name = f"{family}_{variant}"
    n_layers = int(n_layers) if n_layers else None
    if name in _FAMILIES:
        choices = _FAMILIES[name]
        listed = ", ".join(str(k) for k in sorted(choices))
        if n_layers is None:
            raise ArchError(f"arch {name} needs n_layers ({listed})", "n_layers")
        if n_layers not in choices:
            raise ArchError(f"n_layers {n_layers} is not available for {name} ({listed})", "n_layers")
        return choices[n_layers]
    if name in ARCHS:
        own_layers = ARCHS[name][1]
        if n_layers is not None and n_layers != own_layers:
            if own_layers is None:
                raise ArchError(f"n_layers {n_layers} does not apply to {name} (leave it out)", "n_layers")
            raise ArchError(f"arch {name} contradicts n_layers {n_layers}", "n_layers")
        return name
    known = sorted(set(ARCHS) | set(_FAMILIES))
    raise ArchError(f"unknown arch {arch!r}" + did_you_mean(name, known)
                    + f" (known: {', '.join(sorted(_FAMILIES) + sorted(ARCHS))})", "arch")


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
