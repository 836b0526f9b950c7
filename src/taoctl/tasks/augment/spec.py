"""Offline augmentation specs: TAO 3.x ``augment -a`` (protobuf text) and TAO 5 ``dataset augmentation -e`` (YAML).

Torch-free; the launcher imports it. The YAML schema follows TAO 5 data services: a numeric
augmentation value is a number or a list; per image, a two-value list is a uniform range and a
longer one a set of choices, as TAO picks them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from taoctl.engine.spec import Range, SpecKind, at_least, non_negative
from taoctl.engine.spec import load as _load
from taoctl.tasks.augment.proto import augmentation_config_pb2


@dataclasses.dataclass
class RefineBox:
    enabled: bool = False  # TAO's AI-assisted box refinement; taoctl re-fits boxes geometrically
    gt_cache: str = ""


@dataclasses.dataclass
class Rotation:
    angle: float | list[float] = 0.0
    units: Literal["degrees", "radians"] = "degrees"
    refine_box: RefineBox = dataclasses.field(default_factory=RefineBox)


@dataclasses.dataclass
class Shear:
    shear_ratio_x: float | list[float] = 0.0
    shear_ratio_y: float | list[float] = 0.0


@dataclasses.dataclass
class Flip:
    flip_horizontal: bool = False
    flip_vertical: bool = False


@dataclasses.dataclass
class Translation:
    translate_x: int | list[int] = 0
    translate_y: int | list[int] = 0


@dataclasses.dataclass
class SpatialAug:
    rotation: Rotation = dataclasses.field(default_factory=Rotation)
    shear: Shear = dataclasses.field(default_factory=Shear)
    flip: Flip = dataclasses.field(default_factory=Flip)
    translation: Translation = dataclasses.field(default_factory=Translation)


@dataclasses.dataclass
class Hue:
    hue_rotation_angle: float | list[float] = 0.0


@dataclasses.dataclass
class Saturation:
    saturation_shift: float | list[float] = 1.0


@dataclasses.dataclass
class Contrast:
    contrast: float | list[float] = 0.0
    center: float | list[float] = 127.5


@dataclasses.dataclass
class Brightness:
    offset: float | list[float] = 0.0


@dataclasses.dataclass
class ColorAug:
    hue: Hue = dataclasses.field(default_factory=Hue)
    saturation: Saturation = dataclasses.field(default_factory=Saturation)
    contrast: Contrast = dataclasses.field(default_factory=Contrast)
    brightness: Brightness = dataclasses.field(default_factory=Brightness)


@dataclasses.dataclass
class BlurAug:
    std: float | list[float] = 0.0
    size: float | list[float] = 0.0


@dataclasses.dataclass
class Data:
    image_dir: str = ""
    ann_path: str = ""  # KITTI label folder
    dataset_type: Literal["kitti", "coco"] = "kitti"
    output_dataset: str = ""
    output_image_width: int | None = None
    output_image_height: int | None = None
    batch_size: int = 1  # accepted for TAO compatibility; images are processed one at a time
    include_masks: bool = False
    image_extension: str | None = None


@dataclasses.dataclass
class AugmentationExperiment:
    data: Data = dataclasses.field(default_factory=Data)
    spatial_aug: SpatialAug = dataclasses.field(default_factory=SpatialAug)
    color_aug: ColorAug = dataclasses.field(default_factory=ColorAug)
    blur_aug: BlurAug = dataclasses.field(default_factory=BlurAug)
    random_seed: int = 42
    results_dir: str | None = None
    gpu_ids: int | list[int] = 0
    num_gpus: int = 1


_ANGLE = Range(minimum=-360, maximum=360)  # degrees (radians fit too)
_PIXEL = Range(minimum=0, maximum=255)
_OFFSET = Range(minimum=-255, maximum=255)
_CONTRAST = at_least(-1)  # (in - center) * (1 + contrast): below -1 inverts the image

KINDS = {
    "augment": SpecKind(
        "augment",
        message=augmentation_config_pb2.AugmentationConfig,
        ranges={
            "spatial_config.rotation_config.angle": _ANGLE,
            "color_config.hue_saturation_config.hue_rotation_angle": _ANGLE,
            "color_config.hue_saturation_config.saturation_shift": non_negative,
            "color_config.contrast_config.contrast": _CONTRAST,
            "color_config.contrast_config.center": _PIXEL,
            "color_config.brightness_config.offset": _OFFSET,
            "blur_config.std": non_negative,
            "blur_config.size": non_negative,
        },
    ),
    "augmentation": SpecKind(
        "augmentation",
        schema=AugmentationExperiment,
        required=("data.image_dir", "data.ann_path"),
        paths=("data.image_dir", "data.ann_path"),
        ranges={
            "data.output_image_width": at_least(1),
            "data.output_image_height": at_least(1),
            "data.batch_size": at_least(1),
            "num_gpus": at_least(1),
            "spatial_aug.rotation.angle": _ANGLE,
            "color_aug.hue.hue_rotation_angle": _ANGLE,
            "color_aug.saturation.saturation_shift": non_negative,
            "color_aug.contrast.contrast": _CONTRAST,
            "color_aug.contrast.center": _PIXEL,
            "color_aug.brightness.offset": _OFFSET,
            "blur_aug.std": non_negative,
            "blur_aug.size": non_negative,
        },
        corpus=("NVIDIA/tao_tutorials/notebooks/tao_data_services/specs/augment.yaml",
                "NVIDIA/tao_tutorials/notebooks/tao_data_services/kitti/specs/augment.yaml"),
    ),
}


def choices(value) -> list:
    """A YAML value given as a number or a list of numbers, as a list."""
    return list(value) if isinstance(value, list) else [value]


def load(path, kind: str = "augment", subtask: str | None = None, on_warning=None, overrides=()):
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
