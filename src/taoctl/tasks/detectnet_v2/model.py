"""DetectNet_v2's network: a registered backbone cut at stride 16, and per class a coverage and a box head.

``output_cov`` (1x1 conv, one channel per class) gives coverage logits; ``output_bbox`` (1x1 conv,
four channels per class) the (l, t, r, b) offsets of ``encoding``. The deployed module
(:class:`Deployed`) applies the sigmoid, so the exported graph outputs TAO's
``output_cov/Sigmoid`` and ``output_bbox/BiasAdd``.

A model file's manifest records ``model`` (this module's arguments), ``classes`` and
``input_shape``; a pruned file adds its layer widths, applied by the engine on load.
"""

from __future__ import annotations

import torch
from torch import nn

from taoctl.engine.backbones import create_features
from taoctl.errors import TaoctlError
from taoctl.tasks.detectnet_v2.encoding import BBOX_NORM, CELL_OFFSET, STRIDE


def model_arguments(model_config, width: int, height: int) -> dict:
    """DetectNetV2's arguments from ``model_config`` and the preprocessing's output size (the manifest's ``model``)."""
    if model_config.HasField("objective_set") and model_config.objective_set.HasField("bbox"):
        bbox = model_config.objective_set.bbox
        if (bbox.scale and bbox.scale != BBOX_NORM) or (bbox.offset and bbox.offset != CELL_OFFSET):
            raise TaoctlError(f"model_config.objective_set.bbox: scale {bbox.scale:g} / offset {bbox.offset:g} are not "
                              f"supported; taoctl encodes boxes as DeepStream's DetectNet parser decodes them "
                              f"(scale {BBOX_NORM:g}, offset {CELL_OFFSET:g})")
    if width % STRIDE or height % STRIDE:
        raise TaoctlError(f"augmentation_config.preprocessing: output_image_width and output_image_height must be "
                          f"multiples of {STRIDE} (got {width}x{height})")
    arguments = {
        "arch": model_config.arch,
        "n_layers": int(model_config.num_layers) or None,
        "input_image_size": f"3,{height},{width}",
        "use_batch_norm": bool(model_config.use_batch_norm),
        "all_projections": bool(model_config.all_projections),
        "use_pooling": bool(model_config.use_pooling),
        "dropout_rate": float(model_config.dropout_rate),
    }
    if model_config.HasField("activation") and model_config.activation.activation_type:
        arguments["activation"] = {"activation_type": model_config.activation.activation_type,
                                   "activation_parameters": dict(model_config.activation.activation_parameters)}
    return arguments


class DetectNetV2(nn.Module):
    """Backbone features at stride 16 -> (coverage logits N x C x h x w, boxes N x 4C x h x w)."""

    head_names = ("output_cov", "output_bbox")

    def __init__(self, num_classes: int, arch: str, n_layers: int | None = None, *, input_image_size: str,
                 use_batch_norm: bool = True, all_projections: bool = False, use_pooling: bool = False,
                 dropout_rate: float = 0.0, activation=None, freeze_blocks=(), freeze_bn: bool = False):
        super().__init__()
        self.backbone = create_features(arch, (STRIDE,), n_layers, input_image_size=input_image_size,
                                        use_batch_norm=use_batch_norm, all_projections=all_projections,
                                        use_pooling=use_pooling, activation=activation,
                                        freeze_blocks=freeze_blocks, freeze_bn=freeze_bn)
        self.arch = self.backbone.arch
        self.input_shape = self.backbone.input_shape
        self.num_classes = int(num_classes)
        channels = self.backbone.channels[-1]
        self.dropout = nn.Dropout2d(dropout_rate) if dropout_rate else nn.Identity()
        self.output_cov = nn.Conv2d(channels, self.num_classes, 1)
        self.output_bbox = nn.Conv2d(channels, 4 * self.num_classes, 1)
        # Coverage starts near the background rate, so early training is not swamped by false positives.
        nn.init.constant_(self.output_cov.bias, -4.0)
        nn.init.normal_(self.output_cov.weight, std=0.01)

    def forward(self, x):
        features = self.dropout(self.backbone(x)[-1])
        return self.output_cov(features), self.output_bbox(features)


class Deployed(nn.Module):
    """The exported graph: sigmoid coverage and raw boxes, TAO's two outputs."""

    def __init__(self, model: DetectNetV2):
        super().__init__()
        self.model = model

    def forward(self, x):
        cov, bbox = self.model(x)
        return torch.sigmoid(cov), bbox


def build(arguments: dict, num_classes: int, freeze_blocks=(), freeze_bn: bool = False) -> DetectNetV2:
    return DetectNetV2(num_classes, freeze_blocks=freeze_blocks, freeze_bn=freeze_bn, **arguments)
