"""`taoctl <detector> dataset_convert -d SPEC -o PREFIX [-f FOLD] [-r DIR] [--strict]`, shared by every detector.

Each detector's ``scripts/dataset_convert.py`` re-exports ``command`` from here.
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, echo, results_dir_option


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
    if dry_run:
        return finish_dry_run(spec_path, export_spec, spec.KINDS["dataset_export"])
    convert.convert(export_spec, output_filename, validation_fold, results_dir, strict, echo=echo)
