"""taoctl classification inference: label one image (-i) or a folder (-d, writes result.csv).

Works with a .tlt model or an exported .onnx. Prints "path: label (confidence)" per image;
with -d, result.csv (path,label,confidence) goes to -r (default: the image folder's parent).
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, common_options, key_option, results_dir_option, spec_option


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__)
@click.option("-m", "--model_path", required=True, help="Model (.tlt or .onnx).")
@key_option()
@click.option("-i", "--image", default=None, help="One image.")
@click.option("-d", "--image_dir", default=None, help="A folder of images (searched recursively).")
@spec_option(names=("-e", "--experiment_spec", "--experiment_spec_file"))
@click.option("-b", "--batch_size", type=int, default=1, show_default=True)
@click.option("-cm", "--classmap", required=True, type=click.Path(dir_okay=False),
              help="classmap.json written by train.")
@results_dir_option()
@common_options
def command(model_path, key, image, image_dir, experiment_spec, batch_size, classmap, results_dir, gpus, gpu_index,
            num_processes, num_nodes, node_rank, master_addr, master_port, use_amp, log_file, dry_run, verbose):
    from pathlib import Path

    from taoctl.tasks.classification import spec as spec_module
    from taoctl.tasks.classification.evaluation import infer, list_images, open_predictor, write_result_csv

    experiment = spec_module.load(experiment_spec)
    paths = list_images(image, image_dir)
    if dry_run:
        from taoctl.engine.cli import finish_dry_run

        click.echo(f"plan: label {len(paths)} image(s) with {model_path}")
        return finish_dry_run(experiment_spec, experiment, spec_module.KINDS["experiment"],
                              {"-m": model_path, "-cm": classmap}, fields=())
    predictor = open_predictor(experiment, model_path, key or None, classmap)
    rows, skipped = infer(predictor, paths, max(1, batch_size), bool(experiment.eval_config.enable_center_crop))
    for path, label, confidence in rows:
        click.echo(f"{path}: {label} ({confidence:.4f})")
    for path, why in skipped:
        click.echo(f"Warning: skipped {why}", err=True)
    if image_dir:
        out = Path(results_dir) if results_dir else Path(image_dir).resolve().parent
        out.mkdir(parents=True, exist_ok=True)
        write_result_csv(out / "result.csv", rows)
        click.echo(f"Wrote {out / 'result.csv'} ({len(rows)} images, {len(skipped)} skipped)")
    return 0
