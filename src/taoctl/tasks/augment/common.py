"""What `augment` and `dataset augmentation` share: spec → plan, the run, and the check of the output."""

from __future__ import annotations

import math
from pathlib import Path

from taoctl.engine.cli import echo
from taoctl.errors import TaoctlError


def run(image_dir, label_dir, out_image_dir, out_label_dir, plan, seed, extension=None, choices=None,
        strict=False) -> None:
    from taoctl.engine.data import augment, kitti

    for name, folder in (("image", image_dir), ("label", label_dir)):
        if not Path(folder).is_dir():
            raise TaoctlError(f"{name} folder {folder} does not exist")
    stats = augment.augment_dataset(image_dir, label_dir, out_image_dir, out_label_dir, plan, seed, extension,
                                    echo=echo, choices=choices, strict=strict)
    echo(f"Augmented {stats.images} images: {stats.objects_in} objects in, {stats.objects_out} out "
         f"({stats.clipped} touching the image border after clipping, {len(stats.dropped)} dropped)")
    for line in stats.dropped[:20]:
        echo(f"  dropped {line}")
    # The output must be a dataset every taoctl reader accepts as is.
    _, report = kitti.read_kitti(out_image_dir, out_label_dir, extension)
    echo(f"Output {out_image_dir}, {out_label_dir}:")
    echo(report.summary())
    report.fail_if_strict(strict)


def degrees(angle: float, units: str) -> float:
    if units in ("", "degrees"):
        return angle
    if units == "radians":
        return math.degrees(angle)
    raise TaoctlError(f'rotation units "{units}": use "degrees" or "radians"')
