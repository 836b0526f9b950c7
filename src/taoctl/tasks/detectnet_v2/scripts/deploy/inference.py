"""taoctl deploy detectnet_v2 inference: detect objects in a folder of images with an engine.

-m is a TensorRT engine from gen_trt_engine or an .onnx; -e is TAO's inference spec or the
experiment spec. Writes images_annotated/ and KITTI labels/ under -r.
"""

import click

from taoctl.engine.commands import deploy_command

command = deploy_command("inference", "taoctl.tasks.detectnet_v2.task:TASK", __doc__, options=[
    click.option("-i", "--image_dir", required=True, help="Folder of images (searched recursively)."),
    click.option("-r", "--results_dir", required=True, type=click.Path(file_okay=False),
                 help="Folder for images_annotated/, labels/ and status.json."),
])
