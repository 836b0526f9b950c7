"""taoctl classification evaluate: loss, top-k accuracy, per-class precision/recall, confusion matrix.

Takes a taoctl model file (.tlt, .hdf5) or an exported .onnx (fp32/fp16/int8; its class map from -cm or the
classmap.json beside it); the model defaults to eval_config.model_path. Writes results.json,
confusion_matrix.png and evaluation.txt to -r (default: the model's folder).
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("-cm", "--classmap", default=None, type=click.Path(dir_okay=False),
                 help="classmap.json naming an ONNX model's outputs."),
    click.option("-i", "--image_dir", default=None, help="Evaluate this ImageFolder instead of eval_dataset_path."),
])
