"""taoctl classification calibration_tensorfile: save INT8 calibration images for export.

Samples --max_batches x train_config.batch_size_per_gpu images of the spec's training set
(--use_validation_set: its validation set), sized and cropped as evaluation sees them, into one
.npy file (uint8, N x C x H x W). `taoctl classification export --data_type int8 --cal_data_file
FILE` then calibrates on it without the image folders.
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, spec_option


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__)
@click.option("-o", "--output", required=True, help="Calibration file to write (.npy).")
@spec_option(names=("-e", "--experiment_spec", "--experiment_spec_file"))
@click.option("-m", "--max_batches", type=int, default=1, show_default=True, help="Batches of batch_size_per_gpu.")
@click.option("--use_validation_set", is_flag=True, help="Sample the validation set instead of the training set.")
@click.option("--strict", is_flag=True, help="Fail on unreadable images instead of skipping them.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def command(output, experiment_spec, max_batches, use_validation_set, strict, verbose):
    from taoctl.tasks.classification import spec as spec_module
    from taoctl.tasks.classification.exporting import run_calibration_tensorfile

    run_calibration_tensorfile(spec_module.load(experiment_spec), output, max_batches, use_validation_set, strict)
    return 0
