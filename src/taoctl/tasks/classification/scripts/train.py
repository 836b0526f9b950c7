"""taoctl classification train: TAO makenet training from an experiment spec.

Writes ``classmap.json``, ``weights/<arch>_<epoch:03d>.tlt``, status.json, metrics.csv and
TensorBoard logs under ``-r``; re-running the same command resumes.
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, common_options, key_option, results_dir_option, spec_option


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__)
@spec_option(names=("-e", "--experiment_spec_file", "--experiment_spec"))
@results_dir_option(required=True)
@key_option()
@click.option("-c", "--classmap", "classmap", default=None, type=click.Path(dir_okay=False),
              help="JSON {class name: index} fixing the class order (default: sorted train folders).")
@click.option("--init_epoch", type=int, default=1, show_default=True, help="Epoch to start from (resume).")
@click.option("--strict", is_flag=True, help="Fail on unreadable images or empty classes instead of skipping them.")
@click.option("--force", is_flag=True, help="Start over in a results dir that holds a run of another spec.")
@common_options
def command(experiment_spec, results_dir, key, classmap, init_epoch, strict, force, gpus, gpu_index, num_processes,
            num_nodes, node_rank, master_addr, master_port, use_amp, log_file, dry_run, verbose):
    from taoctl.tasks.classification import spec as spec_module

    experiment = spec_module.load(experiment_spec, subtask="train")
    if dry_run:
        from taoctl.engine.cli import finish_dry_run

        click.echo(f"plan: train {experiment.model_config.arch} for {experiment.train_config.n_epochs} epochs "
                   f"into {results_dir}")
        return finish_dry_run(experiment_spec, experiment, spec_module.KINDS["experiment"])
    from taoctl.tasks.classification.training import run_training

    run_training(experiment, experiment_spec, results_dir, key=key or None, classmap=classmap, init_epoch=init_epoch,
                 strict=strict, force=force, gpus=gpus, gpu_index=gpu_index, use_amp=use_amp, log_file=log_file)
    return 0
