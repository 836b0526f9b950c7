"""taoctl deploy classification inference: label a folder of images with an engine, writing result.csv.

-m is a TensorRT engine from gen_trt_engine or an .onnx; result.csv goes to -r (default: the
image folder's parent), as `taoctl model classification inference -d` writes it.
"""

import click

from taoctl.engine.commands import deploy_command

command = deploy_command("inference", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("-i", "--image_dir", required=True, help="A folder of images (searched recursively)."),
    click.option("-c", "-cm", "--classmap", default=None, type=click.Path(dir_okay=False),
                 help="classmap.json naming the model's outputs (default: the one beside -m)."),
])
