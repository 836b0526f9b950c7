"""taoctl deploy yolo_v3 inference: detect objects in a folder of images with an engine or an .onnx.

Reads the model's BatchedNMS outputs, keeps detections scoring at least -t, and writes
``images_annotated/`` and KITTI ``labels/`` (the confidence as a 16th field) under -r.
"""

import click

from taoctl.engine.commands import deploy_command

command = deploy_command("inference", "taoctl.tasks.yolo_v3.task:TASK", __doc__, options=[
    click.option("-i", "--image_dir", required=True, help="Folder of images, or one image."),
    click.option("-r", "--results_dir", required=True, type=click.Path(file_okay=False),
                 help="Folder for images_annotated/, labels/ and status.json."),
    click.option("-t", "--threshold", type=float, default=0.3, show_default=True,
                 help="Detections below this confidence are not drawn or written."),
])
