"""taoctl detectnet_v2 train: DetectNet_v2 from an experiment spec, TAO's flags.

Writes ``weights/<model_name>_<epoch:03d>.tlt`` (and ``<model_name>_best.tlt``, the epoch with the
best validation mAP), status.json, training.csv, metrics.csv and TensorBoard events (``events/``)
under ``-r``; validation mAP per ``evaluation_config.validation_period_during_training``.
Re-running the same command resumes.
Retrain a pruned model through ``model_config.pretrained_model_file`` with ``load_graph: true``.
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.detectnet_v2.task:TASK", __doc__, options=[
    click.option("-n", "--model_name", default="model", show_default=True, help="Checkpoint file name prefix."),
    click.option("--enable_determinism", is_flag=True,
                 help="Deterministic algorithms (seeded runs repeat exactly; slower on GPU)."),
])
