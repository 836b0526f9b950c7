"""taoctl detectnet_v2 evaluate: validation cost, per-class AP and mAP, as TAO prints them.

Evaluates a model file or its exported .onnx on the spec's validation data (--use_training_set:
its training data; -i/-l: a KITTI image and label folder), clustered with postprocessing_config
and matched with evaluation_config. Writes results.json and PR curves to -r (default: the
model's folder).
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.detectnet_v2.task:TASK", __doc__, options=[
    click.option("-f", "--framework", type=click.Choice(["tlt", "onnx", "tensorrt"]), default="tlt",
                 show_default=True, help="What -m is (an .onnx is recognised by its name whatever this says)."),
    click.option("--use_training_set", is_flag=True, help="Evaluate on the training data instead of validation."),
    click.option("-i", "--image_dir", default=None, help="Evaluate these images (with -l) instead of the spec's."),
    click.option("-l", "--label_dir", default=None, help="KITTI labels of -i's images."),
])
