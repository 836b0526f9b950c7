"""taoctl classification train: TAO makenet training from an experiment spec.

Writes ``classmap.json``, ``weights/<arch>_<epoch:03d>.tlt`` (``.hdf5`` in TAO 5's form,
``taoctl model classification_tf1 train``, where -k does not encrypt), status.json, metrics.csv
and TensorBoard logs under ``-r``; re-running the same command resumes.
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("-c", "--classmap", default=None, type=click.Path(dir_okay=False),
                 help="JSON {class name: index} fixing the class order (default: sorted train folders)."),
])
