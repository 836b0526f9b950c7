"""Offline augmentation of a KITTI detection dataset (TAO's ``augment`` / ``dataset augmentation``).

Geometry goes through albumentations (``Affine`` for rotation, shear and translation, flips,
``Resize``) with its bounding-box machinery: each box's corners are transformed and the box is
re-fitted around them, then clipped to the image; a box that keeps less than ``min_visibility``
of its area, or less than a pixel of width or height, is dropped and counted. Values follow
TAO 5's augmentation pipeline (nvidia_tao_ds, DALI): a positive angle turns the image clockwise,
``shear_ratio_x`` moves lower rows right, hue rotates by minus the angle in degrees, saturation
is a factor, and contrast and brightness give ``(in + offset - center) * (1 + contrast) + center``;
then a Gaussian blur. A list of values (TAO 5) is picked from as TAO does: two values are a
uniform range, more are choices. Every random choice comes from one seeded generator, so a seed
reproduces the dataset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from taoctl.engine.data import kitti
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic


@dataclasses.dataclass
class AugmentPlan:
    """What to do to one image (``augment_dataset`` may draw some fields per image from ``choices``)."""

    rotation_degrees: float = 0.0
    shear_ratio_x: float = 0.0  # TAO's ratio: tan of the shear angle
    shear_ratio_y: float = 0.0
    flip_horizontal: bool = False
    flip_vertical: bool = False
    translate_x: int = 0  # pixels
    translate_y: int = 0
    hue_rotation_degrees: float = 0.0
    saturation_factor: float = 1.0
    contrast: float = 0.0  # out = (in + brightness_offset - center) * (1 + contrast) + center
    contrast_center: float = 127.5
    brightness_offset: float = 0.0
    blur_std: float = 0.0
    blur_size: int = 0
    output_width: int = 0  # 0: keep the input size
    output_height: int = 0
    min_visibility: float = 0.25

    def draw(self, choices: Mapping[str, Sequence[float]], rng: np.random.Generator) -> AugmentPlan:
        """This plan with each field named in ``choices`` picked from its values as TAO 5 does.

        One value: that value; two: uniform between them; more: one of them; none: unchanged.
        """
        drawn = {}
        for name, values in choices.items():
            values = list(values)
            if len(values) == 1:
                value = values[0]
            elif len(values) == 2:
                value = rng.uniform(min(values), max(values))
            elif values:
                value = values[int(rng.integers(len(values)))]
            else:
                continue
            kind = type(getattr(self, name))
            drawn[name] = int(round(value)) if kind is int else kind(value)
        return dataclasses.replace(self, **drawn)


@dataclasses.dataclass
class AugmentStats:
    images: int = 0
    objects_in: int = 0
    objects_out: int = 0
    clipped: int = 0
    dropped: list[str] = dataclasses.field(default_factory=list)


def _pipeline(plan: AugmentPlan, width: int, height: int, seed: int):
    import albumentations as A
    import cv2

    ops = []
    angle = plan.rotation_degrees
    if angle or plan.shear_ratio_x or plan.shear_ratio_y or plan.translate_x or plan.translate_y:
        # albumentations turns counter-clockwise and shears the other way round from TAO: negate.
        shear_x, shear_y = (-float(np.degrees(np.arctan(r))) for r in (plan.shear_ratio_x, plan.shear_ratio_y))
        ops.append(A.Affine(rotate=(-angle, -angle), shear={"x": (shear_x, shear_x), "y": (shear_y, shear_y)},
                            translate_px={"x": (plan.translate_x,) * 2, "y": (plan.translate_y,) * 2},
                            rotate_method="largest_box", border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0))
    if plan.flip_horizontal:
        ops.append(A.HorizontalFlip(p=1.0))
    if plan.flip_vertical:
        ops.append(A.VerticalFlip(p=1.0))
    if plan.hue_rotation_degrees:
        # TAO shifts hue by minus the angle; OpenCV's 8-bit hue runs 0..180 (half-degrees).
        half = -plan.hue_rotation_degrees / 2.0
        ops.append(A.HueSaturationValue(hue_shift_limit=(half, half), sat_shift_limit=0, val_shift_limit=0, p=1.0))
    if plan.saturation_factor != 1.0:
        ops.append(A.ColorJitter(brightness=0, contrast=0, hue=0,
                                 saturation=(plan.saturation_factor, plan.saturation_factor), p=1.0))
    if plan.blur_std > 0 and plan.blur_size > 0:
        size = plan.blur_size if plan.blur_size % 2 else plan.blur_size + 1  # a Gaussian kernel is odd
        ops.append(A.GaussianBlur(blur_limit=(size, size), sigma_limit=(plan.blur_std, plan.blur_std), p=1.0))
    if plan.output_width and plan.output_height and (plan.output_width, plan.output_height) != (width, height):
        ops.append(A.Resize(height=plan.output_height, width=plan.output_width, p=1.0))
    if not ops:
        return None
    return A.Compose(ops, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["index"], clip=True,
                                                   min_visibility=plan.min_visibility, min_width=1, min_height=1),
                     seed=seed)


def _contrast_brightness(image: np.ndarray, plan: AugmentPlan) -> np.ndarray:
    if not plan.contrast and not plan.brightness_offset:
        return image
    out = (image.astype(np.float32) + plan.brightness_offset - plan.contrast_center) * (1.0 + plan.contrast)
    return np.clip(np.rint(out + plan.contrast_center), 0, 255).astype(np.uint8)


def augment_frame(image: np.ndarray, objects: list[kitti.KittiObject], plan: AugmentPlan, seed: int, stats: AugmentStats | None = None, where: str = "") -> tuple[np.ndarray, list]:
    """One image (H, W, 3 uint8 RGB) and its objects, transformed; boxes re-fitted, clipped or dropped."""
    height, width = image.shape[:2]
    pipeline = _pipeline(plan, width, height, seed)
    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
    if pipeline is None:  # colour only: nothing moves
        result = {"image": image, "bboxes": boxes, "index": list(range(len(objects)))}
    else:
        result = pipeline(image=image, bboxes=boxes, index=list(range(len(objects))))
    out_image = _contrast_brightness(result["image"], plan)
    out_h, out_w = out_image.shape[:2]
    out_objects = []
    kept = set()
    for box, i in zip(result["bboxes"], result["index"]):
        x1, y1, x2, y2 = (float(v) for v in box)
        out_objects.append(dataclasses.replace(objects[int(i)], box=(x1, y1, x2, y2)))
        kept.add(int(i))
        if stats is not None and (x1 <= 0 or y1 <= 0 or x2 >= out_w or y2 >= out_h):
            stats.clipped += 1
    if stats is not None:
        stats.images += 1
        stats.objects_in += len(objects)
        stats.objects_out += len(out_objects)
        for i, obj in enumerate(objects):
            if i not in kept:
                stats.dropped.append(f"{where}:{obj.line} {obj.cls} (left the image)")
    return out_image, out_objects


def _write_image(path: Path, image: np.ndarray) -> None:
    import cv2

    # Encoded here and written by Python, so a full disk is an OSError naming the file (imwrite says only False).
    encoded, data = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not encoded:
        raise TaoctlError(f"cannot encode image {path}")
    write_atomic(path, data.tobytes())


def augment_dataset(image_dir: str | os.PathLike, label_dir: str | os.PathLike, out_image_dir: str | os.PathLike,
                    out_label_dir: str | os.PathLike, plan: AugmentPlan, seed: int = 0,
                    extension: str | None = None, echo: Callable[[str], None] = print,
                    choices: Mapping[str, Sequence[float]] | None = None, strict: bool = False) -> AugmentStats:
    """Augment every labelled image of a KITTI folder pair into another; returns counts.

    ``choices``: plan fields given as lists (TAO 5's ``angle: [10, 30]``): one value per image.
    ``strict``: any problem in the input labels stops before anything is written.
    """
    import cv2

    frames, report = kitti.read_kitti(image_dir, label_dir, extension)
    echo(report.summary())
    report.fail_if_strict(strict)
    if not frames:
        raise TaoctlError(f"no labelled images in {image_dir}")
    out_image_dir, out_label_dir = Path(out_image_dir), Path(out_label_dir)
    if out_image_dir.resolve() == Path(image_dir).resolve():
        raise TaoctlError("the output folder must differ from the input folder")
    out_image_dir.mkdir(parents=True, exist_ok=True)
    out_label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stats = AugmentStats()
    for frame in frames:
        image_plan = plan.draw(choices or {}, rng)
        image = cv2.imread(frame.image_path, cv2.IMREAD_COLOR)
        if image is None:
            raise TaoctlError(f"cannot read image {frame.image_path}")
        label_path = Path(label_dir) / f"{Path(frame.image_path).stem}.txt"
        out, objects = augment_frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), frame.objects, image_plan,
                                     int(rng.integers(2**31)), stats, str(label_path))
        name = Path(frame.image_path).name
        _write_image(out_image_dir / name, out)
        write_atomic(out_label_dir / f"{Path(name).stem}.txt", "".join(o.to_line() + "\n" for o in objects))
    return stats
