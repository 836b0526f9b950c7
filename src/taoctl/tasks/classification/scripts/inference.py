"""taoctl classification inference: label one image (-i) or a folder (-d, writes result.csv).

Works with a taoctl model file (.tlt, .hdf5) or an exported .onnx. -i prints TAO's
"Current predictions" / "Class label" / "Class name" lines; -d prints "path: label (confidence)"
per image and writes TAO's result.csv (path,class name,confidence; no header) into -r, or into
the image folder when -r is not given.
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("inference", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("-i", "--image", default=None, help="One image."),
    click.option("-d", "--image_dir", default=None, help="A folder of images (searched recursively)."),
    click.option("-cm", "--classmap", required=True, type=click.Path(dir_okay=False),
                 help="classmap.json written by train."),
])
