"""taoctl deploy classification evaluate: the evaluate report (results.json, confusion matrix) of an engine.

-m is a TensorRT engine from gen_trt_engine (refused in one line when built for another TensorRT
or GPU) or an .onnx (onnxruntime); the class map comes from -c or the classmap.json beside it.
"""

import click

from taoctl.engine.commands import deploy_command

command = deploy_command("evaluate", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("-c", "-cm", "--classmap", default=None, type=click.Path(dir_okay=False),
                 help="classmap.json naming the model's outputs (default: the one beside -m)."),
    click.option("-i", "--image_dir", default=None, help="Evaluate this ImageFolder instead of eval_dataset_path."),
])
