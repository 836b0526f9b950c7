"""What `augment` and `dataset augmentation` share: spec → plan, the run, and the check of the output."""

from __future__ import annotations

import math
from pathlib import Path

from taoctl.engine.cli import echo
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_folders, write_atomic

OUTPUT_MARKER = ".taoctl_augment"  # in each output folder: a later run may replace this folder


def run(image_dir, label_dir, out_image_dir, out_label_dir, plan, seed, extension=None, choices=None,
        strict=False) -> None:
    """Augment into ``out_image_dir`` / ``out_label_dir``, which appear complete at the end or not at all.

    An output folder must be new, empty or an earlier augment's output (which is replaced
    whole, so stale images are never kept or counted); a folder holding anything else is refused.
    """
    from taoctl.engine.data import augment, kitti

    for name, folder in (("image", image_dir), ("label", label_dir)):
        if not Path(folder).is_dir():
            raise TaoctlError(f"{name} folder {folder} does not exist")
    outputs = list(dict.fromkeys(Path(p).absolute() for p in (out_image_dir, out_label_dir)))
    for folder in outputs:
        check_replaceable(folder)
    with atomic_folders(outputs) as staged:
        into = dict(zip(outputs, staged))
        stats = augment.augment_dataset(image_dir, label_dir, into[Path(out_image_dir).absolute()],
                                        into[Path(out_label_dir).absolute()], plan, seed, extension,
                                        echo=echo, choices=choices, strict=strict)
        for folder in staged:
            write_atomic(folder / OUTPUT_MARKER, "Written by taoctl augment; a re-run into this folder replaces it.\n")
    echo(f"Augmented {stats.images} images: {stats.objects_in} objects in, {stats.objects_out} out "
         f"({stats.clipped} touching the image border after clipping, {len(stats.dropped)} dropped)")
    for line in stats.dropped[:20]:
        echo(f"  dropped {line}")
    # The output must be a dataset every taoctl reader accepts as is.
    _, report = kitti.read_kitti(out_image_dir, out_label_dir, extension)
    echo(f"Output {out_image_dir}, {out_label_dir}:")
    echo(report.summary())
    report.fail_if_strict(strict)


def check_replaceable(folder: Path) -> None:
    """Refuse an output folder holding files an earlier augment did not write (an input folder among them)."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise TaoctlError(f"output {folder} is a file, not a folder")
    if any(folder.iterdir()) and not (folder / OUTPUT_MARKER).is_file():
        raise TaoctlError(f"output folder {folder} is not empty and was not written by taoctl augment; "
                          f"name a new or empty folder")


def degrees(angle: float, units: str) -> float:
    if units in ("", "degrees"):
        return angle
    if units == "radians":
        return math.degrees(angle)
    raise TaoctlError(f'rotation units "{units}": use "degrees" or "radians"')
