"""YOLOv3 on any registered backbone: C3/C4/C5 features, a top-down neck, three heads.

The backbone's stride 8/16/32 maps (``engine.backbones.create_features``) feed YOLOv3's neck:
at stride 32 a convolution set, then a 1x1 reduction, x2 upsampling and concatenation with the
stride-16 map, another set, and again down to stride 8. A convolution set is a 1x1 conv then
``arch_conv_blocks`` (TAO's field, 0-2) pairs of 3x3 + 1x1 convs; each head is a 3x3 conv and
the 1x1 output conv of ``3 * (5 + classes)`` channels, named as TAO names them
(``conv_big_object`` stride 32, ``conv_mid_object`` 16, ``conv_sm_object`` 8). Convs are
conv + BatchNorm + LeakyReLU(0.1) (ReLU with ``force_relu``). The neck widths (64/128/256 from
stride 8 to 32) are half of TAO's darknet-sized 128/256/512, with one width per set instead of
alternating w/2w: on a resnet18 the neck and heads cost 1.0 / 1.9 / 2.7 M parameters with
arch_conv_blocks 0 / 1 / 2, so that a CPU trains it.

The deployed module (:class:`Deployed`) appends the decoding (``engine.detection.yolo``): every
anchor's box and class scores, which the export's tail (``engine.detection.nms.BatchedNMS``, appended
to the ONNX graph) turns into TAO's BatchedNMS outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from taoctl.engine.backbones import create_features
from taoctl.engine.detection.yolo import YoloDecode

STRIDES = (8, 16, 32)
NECK_WIDTHS = (64, 128, 256)  # stride 8, 16, 32
HEAD_NAMES = ("conv_sm_object", "conv_mid_object", "conv_big_object")  # stride 8, 16, 32


def model_arguments(yolov3_config, width: int, height: int, anchors: list[np.ndarray]) -> dict:
    """The manifest's ``model``: what rebuilds the network without the spec."""
    return {
        "arch": yolov3_config.arch,
        "n_layers": int(yolov3_config.nlayers) or None,
        "input_image_size": f"3,{height},{width}",
        "arch_conv_blocks": int(yolov3_config.arch_conv_blocks),
        "force_relu": bool(yolov3_config.force_relu),
        "anchors": [np.asarray(a, dtype=np.float64).round(4).tolist() for a in anchors],
    }


def _conv(in_channels: int, out_channels: int, kernel: int, relu: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True) if relu else nn.LeakyReLU(0.1, inplace=True))


def _conv_set(in_channels: int, width: int, blocks: int, relu: bool) -> nn.Sequential:
    layers = [_conv(in_channels, width, 1, relu)]
    for _ in range(blocks):
        layers += [_conv(width, width, 3, relu), _conv(width, width, 1, relu)]
    return nn.Sequential(*layers)


class YOLOv3(nn.Module):
    """Image -> raw head outputs [B, 3 * (5 + C), H / s, W / s] for s = 8, 16, 32."""

    head_names = HEAD_NAMES

    def __init__(self, num_classes: int, arch: str, n_layers: int | None = None, *, input_image_size: str,
                 anchors, arch_conv_blocks: int = 0, force_relu: bool = False, freeze_blocks=(),
                 freeze_bn: bool = False):
        super().__init__()
        options = {"activation": {"activation_type": "relu"}} if force_relu else {}
        self.backbone = create_features(arch, STRIDES, n_layers, input_image_size=input_image_size,
                                        freeze_blocks=freeze_blocks, freeze_bn=freeze_bn, **options)
        self.arch = self.backbone.arch
        self.input_shape = self.backbone.input_shape
        self.num_classes = int(num_classes)
        self.anchors = [np.asarray(a, dtype=np.float32).reshape(-1, 2) for a in anchors]
        outputs = [len(a) * (5 + self.num_classes) for a in self.anchors]
        c3, c4, c5 = self.backbone.channels
        w8, w16, w32 = NECK_WIDTHS
        blocks = int(arch_conv_blocks)
        self.set_32 = _conv_set(c5, w32, blocks, force_relu)
        self.reduce_32 = _conv(w32, w16, 1, force_relu)
        self.set_16 = _conv_set(c4 + w16, w16, blocks, force_relu)
        self.reduce_16 = _conv(w16, w8, 1, force_relu)
        self.set_8 = _conv_set(c3 + w8, w8, blocks, force_relu)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.head_32 = _conv(w32, w32, 3, force_relu)
        self.head_16 = _conv(w16, w16, 3, force_relu)
        self.head_8 = _conv(w8, w8, 3, force_relu)
        self.conv_big_object = nn.Conv2d(w32, outputs[2], 1)
        self.conv_mid_object = nn.Conv2d(w16, outputs[1], 1)
        self.conv_sm_object = nn.Conv2d(w8, outputs[0], 1)
        for head in (self.conv_sm_object, self.conv_mid_object, self.conv_big_object):
            # Objectness starts near "nothing here", so early training is not swamped by false positives.
            nn.init.normal_(head.weight, std=0.01)
            bias = head.bias.detach().view(-1, 5 + self.num_classes)
            bias.zero_()
            bias[:, 4] = -4.0

    def forward(self, x):
        c3, c4, c5 = self.backbone(x)
        p5 = self.set_32(c5)
        p4 = self.set_16(torch.cat([self.upsample(self.reduce_32(p5)), c4], dim=1))
        p3 = self.set_8(torch.cat([self.upsample(self.reduce_16(p4)), c3], dim=1))
        return (self.conv_sm_object(self.head_8(p3)), self.conv_mid_object(self.head_16(p4)),
                self.conv_big_object(self.head_32(p5)))

    def decoder(self) -> YoloDecode:
        return YoloDecode(self.anchors, STRIDES, self.num_classes)


class Deployed(nn.Module):
    """The exported graph: image -> (boxes [B, N, 4] x1 y1 x2 y2 input pixels, scores [B, N, C])."""

    def __init__(self, model: YOLOv3):
        super().__init__()
        self.model = model
        self.decode = model.decoder()

    def forward(self, x):
        return self.decode(self.model(x))


def build(arguments: dict, num_classes: int, freeze_blocks=(), freeze_bn: bool = False) -> YOLOv3:
    return YOLOv3(num_classes, freeze_blocks=freeze_blocks, freeze_bn=freeze_bn, **arguments)
