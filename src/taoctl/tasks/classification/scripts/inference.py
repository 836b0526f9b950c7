"""taoctl classification inference: label one image (-i) or a folder (-d, writes result.csv).

Works with a .tlt model or an exported .onnx. Prints "path: label (confidence)" per image;
with -d, result.csv (path,label,confidence) goes to -r (default: the image folder's parent).
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("inference", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("-i", "--image", default=None, help="One image."),
    click.option("-d", "--image_dir", default=None, help="A folder of images (searched recursively)."),
    click.option("-cm", "--classmap", required=True, type=click.Path(dir_okay=False),
                 help="classmap.json written by train."),
])
