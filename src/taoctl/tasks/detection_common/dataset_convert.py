"""`taoctl <detector> dataset_convert -d SPEC -o PREFIX [-f FOLD] [-r DIR] [--strict]`, shared by every detector.

Each detector's ``scripts/dataset_convert.py`` re-exports ``command`` from here.
"""

from __future__ import annotations

from pathlib import Path

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, echo, results_dir_option
from taoctl.outputs import refuse_overwrites


@click.command(context_settings=CONTEXT_SETTINGS,
               help="Convert a KITTI or COCO detection dataset to TFRecord shards (TAO's layout and keys), "
                    "checking every label on the way.")
@click.option("-d", "--dataset_export_spec", "--dataset-export-spec", "spec_path", required=True,
              type=click.Path(dir_okay=False), help="dataset_convert spec (DatasetExportConfig, protobuf text).")
@click.option("-o", "--output_filename", "--output-filename", required=True,
              help="Output prefix: shards are PREFIX-fold-NNN-of-NNN-shard-NNNNN-of-NNNNN.")
@click.option("-f", "--validation_fold", "--validation-fold", type=int, default=None,
              help="Validation fold (0-based); the sample modifier changes only the other folds.")
@results_dir_option()
@click.option("--strict", is_flag=True, help="Fail (exit 2) on any label problem, before writing anything.")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=True,
              help="Parse the spec, check the paths it names, print the plan and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def command(spec_path, output_filename, validation_fold, results_dir, strict, dry_run, verbose):
    from taoctl.engine.cli import finish_dry_run
    from taoctl.tasks.detection_common import convert, spec

    export_spec = spec.load(spec_path)
    refuse_overwrites(_inputs(spec_path, export_spec), {"-o": output_filename, "-r": results_dir})
    if dry_run:
        return finish_dry_run(spec_path, export_spec, spec.KINDS["dataset_export"])
    convert.convert(export_spec, output_filename, validation_fold, results_dir, strict, echo=echo)


def _inputs(spec_path, export_spec) -> list[tuple[str, Path]]:
    """The spec and the folders and files it reads, as ``convert`` finds them under the root."""
    inputs = [("-d", Path(spec_path))]
    if export_spec.HasField("kitti_config") and export_spec.kitti_config.root_directory_path:
        config = export_spec.kitti_config
        root = Path(config.root_directory_path)
        inputs += [("kitti_config.image_dir_name", root / config.image_dir_name),
                   ("kitti_config.label_dir_name", root / config.label_dir_name)]
        if config.kitti_sequence_to_frames_file:
            inputs.append(("kitti_config.kitti_sequence_to_frames_file", root / config.kitti_sequence_to_frames_file))
    if export_spec.HasField("coco_config"):
        config = export_spec.coco_config
        root = Path(config.root_directory_path)
        inputs += [(f"coco_config.img_dir_names[{i}]", root / name) for i, name in enumerate(config.img_dir_names)]
        inputs += [(f"coco_config.annotation_files[{i}]", root / name)
                   for i, name in enumerate(config.annotation_files)]
    return inputs
