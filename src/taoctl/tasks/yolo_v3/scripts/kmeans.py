"""`taoctl yolo_v3 kmeans -l LABELS... -i IMAGES... -x W -y H [-n 9]`: anchor shapes for the spec.

k-means with the 1 - IoU distance on every labelled box, each image stretched to the network
input (-x by -y), as TAO's kmeans. Prints the anchors, smallest first, and the three
``yolov3_config`` lines to paste (the smallest third for stride 8, then 16, then 32); with
--results_dir also writes them to anchors.txt there. The same labels and --seed give the same anchors.
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, MultiValueOption, echo

_SPEC_FIELDS = ("small_anchor_shape", "mid_anchor_shape", "big_anchor_shape")


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__.split("\n\n")[1])
@click.option("-l", "--label_folders", cls=MultiValueOption, required=True, help="KITTI label folders.")
@click.option("-i", "--image_folders", cls=MultiValueOption, required=True,
              help="Their image folders, one per label folder, in the same order.")
@click.option("-x", "--size_x", type=click.IntRange(min=1), required=True, help="Network input width.")
@click.option("-y", "--size_y", type=click.IntRange(min=1), required=True, help="Network input height.")
@click.option("-n", "--num_clusters", type=click.IntRange(min=3), default=9, show_default=True,
              help="Anchors to find (a multiple of 3: one third per scale).")
@click.option("--max_steps", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Most k-means iterations.")
@click.option("--min_x", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Ignore boxes not wider than this (network pixels).")
@click.option("--min_y", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Ignore boxes not higher than this (network pixels).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first centres (taoctl extension).")
@click.option("--results_dir", type=click.Path(file_okay=False), default=None, help="Also write anchors.txt here.")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=True, help="Check that the folders exist and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def command(label_folders, image_folders, size_x, size_y, num_clusters, max_steps, min_x, min_y, seed, results_dir,
            dry_run, verbose):
    import os
    from pathlib import Path

    from taoctl.engine.data.kitti import LabelReport
    from taoctl.engine.detection.anchors import box_shapes, format_anchor_shape, kmeans_anchors
    from taoctl.errors import TaoctlError
    from taoctl.fileio import write_atomic

    if num_clusters % 3:
        raise TaoctlError(f"-n/--num_clusters {num_clusters}: must be a multiple of 3 (one third per scale)")
    if dry_run:
        named = (("-l", label_folders), ("-i", image_folders))
        missing = [f"{flag}: {folder} does not exist" for flag, folders in named for folder in folders
                   if not os.path.isdir(folder)]
        for line in missing:
            click.echo(line, err=True)
        if missing:
            raise TaoctlError(f"dry run: {len(missing)} folder(s) named by the flags do not exist")
        echo("Dry run OK: every folder the flags name exists.")
        return
    report = LabelReport()
    shapes = box_shapes(label_folders, image_folders, size_x, size_y, min_x, min_y, report)
    if not report.clean:
        echo(report.summary())
    anchors, mean_iou = kmeans_anchors(shapes, num_clusters, max_steps, seed)
    per_scale = num_clusters // 3
    lines = [f'{field}: "{format_anchor_shape(anchors[i * per_scale:(i + 1) * per_scale])}"'
             for i, field in enumerate(_SPEC_FIELDS)]
    echo(f"{len(shapes)} boxes, mean IoU with their closest anchor {mean_iou:.4f}")
    echo("Please use following anchor sizes in YOLO config:")
    for w, h in anchors:
        echo(f"({w:.2f}, {h:.2f})")
    echo("yolov3_config lines:")
    for line in lines:
        echo(f"  {line}")
    if results_dir:
        write_atomic(Path(results_dir) / "anchors.txt", "\n".join(lines) + "\n")
