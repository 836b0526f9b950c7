"""taoctl classification export: ONNX (fp32/fp16) or calibrated INT8 (QDQ ONNX + TensorRT cache).

The ONNX model has a dynamic batch axis, input ``input_1`` (normalised N x C x H x W) and
output ``predictions`` (softmax probabilities), and is checked against PyTorch on real images
(max abs difference printed). ``--data_type int8`` calibrates on --cal_image_dir (or the
spec's validation/training images) and writes the QDQ model onnxruntime runs plus a
TensorRT calibration cache; ``--engine_file`` builds a TensorRT engine when tensorrt imports;
``--gen_ds_config`` writes DeepStream's nvinfer_config.txt and labels.txt.
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, key_option, spec_option


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__)
@click.option("-m", "--model", "model_path", required=True, help="Trained .tlt model.")
@click.option("-o", "--output_file", default=None, help="Output .onnx (default: the model's name with .onnx).")
@key_option()
@spec_option(required=False, names=("-e", "--experiment_spec", "--experiment_spec_file"))
@click.option("--data_type", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--cal_image_dir", default=None, help="Images to calibrate INT8 on (searched recursively).")
@click.option("--cal_data_file", default=None,
              help="Calibration images (.npy): read when it exists and no --cal_image_dir is given, else written.")
@click.option("--cal_cache_file", default=None, help="TensorRT calibration cache (default <output>.cal.bin).")
@click.option("--batches", type=int, default=10, show_default=True, help="Calibration batches.")
@click.option("--batch_size", type=int, default=8, show_default=True, help="Calibration batch size.")
@click.option("--max_batch_size", type=int, default=16, show_default=True, help="TensorRT engine's largest batch.")
@click.option("--max_workspace_size", type=int, default=None, help="Accepted for TAO compatibility (TensorRT picks).")
@click.option("--engine_file", default=None, help="Build a TensorRT engine here (needs tensorrt).")
@click.option("--gen_ds_config", is_flag=True, help="Write DeepStream nvinfer_config.txt and labels.txt.")
@click.option("--classmap_json", default=None, type=click.Path(dir_okay=False),
              help="Class map for labels.txt (default: the model's).")
@click.option("--target_opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
@click.option("--cal_method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="INT8 calibration method.")
@click.option("--strict", is_flag=True, help="Fail on unreadable calibration images instead of skipping them.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def command(model_path, output_file, key, experiment_spec, data_type, cal_image_dir, cal_data_file, cal_cache_file,
            batches, batch_size, max_batch_size, max_workspace_size, engine_file, gen_ds_config, classmap_json,
            target_opset, cal_method, strict, verbose):
    from taoctl.tasks.classification.exporting import run_export

    run_export(model_path, output_file, key or None, experiment_spec, data_type, cal_image_dir, cal_data_file,
               cal_cache_file, batches, batch_size, max_batch_size, engine_file, gen_ds_config, classmap_json,
               target_opset, cal_method, strict)
    return 0
