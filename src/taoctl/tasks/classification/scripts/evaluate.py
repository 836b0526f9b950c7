"""taoctl classification evaluate: loss, top-k accuracy, per-class precision/recall, confusion matrix.

Takes a .tlt model or an exported .onnx (fp32/fp16/int8; its class map from -cm or the
classmap.json beside it). Writes results.json, confusion_matrix.png and evaluation.txt to -r
(default: the model's folder).
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, common_options, key_option, results_dir_option, spec_option


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__)
@spec_option(names=("-e", "--experiment_spec", "--experiment_spec_file"))
@click.option("-m", "--model_path", default=None, help="Model (.tlt or .onnx); default eval_config.model_path.")
@key_option()
@results_dir_option()
@click.option("-b", "--batch_size", type=int, default=None, help="Batch size (default eval_config.batch_size).")
@click.option("-cm", "--classmap", default=None, type=click.Path(dir_okay=False),
              help="classmap.json naming an ONNX model's outputs.")
@click.option("-i", "--image_dir", default=None, help="Evaluate this ImageFolder instead of eval_dataset_path.")
@click.option("--strict", is_flag=True, help="Fail on unreadable images instead of skipping them.")
@common_options
def command(experiment_spec, model_path, key, results_dir, batch_size, classmap, image_dir, strict, gpus, gpu_index,
            num_processes, num_nodes, node_rank, master_addr, master_port, use_amp, log_file, dry_run, verbose):
    from pathlib import Path

    from taoctl.errors import TaoctlError
    from taoctl.tasks.classification import spec as spec_module

    experiment = spec_module.load(experiment_spec, subtask="evaluate" if not image_dir else None)
    ec = experiment.eval_config
    model_path = model_path or ec.model_path
    if not model_path:
        raise TaoctlError("no model to evaluate: pass -m or set eval_config.model_path")
    data = image_dir or ec.eval_dataset_path
    if not data:
        raise TaoctlError("no data to evaluate: set eval_config.eval_dataset_path or pass -i")
    if dry_run:
        from taoctl.engine.cli import finish_dry_run

        click.echo(f"plan: evaluate {model_path} on {data}")
        return finish_dry_run(experiment_spec, experiment, spec_module.KINDS["experiment"],
                              {"model": model_path, "data": data, "-cm": classmap}, fields=())
    from taoctl.tasks.classification.evaluation import evaluate_model

    out = Path(results_dir) if results_dir else Path(model_path).resolve().parent
    evaluate_model(experiment, model_path, key or None, data, out, batch_size, classmap, strict)
    return 0
