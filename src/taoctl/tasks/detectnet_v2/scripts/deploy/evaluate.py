"""taoctl deploy detectnet_v2 evaluate: per-class AP and mAP of an engine, as `taoctl model detectnet_v2 evaluate`.

-m is a TensorRT engine from gen_trt_engine (refused in one line when built for another TensorRT
or GPU) or an .onnx; the data is the spec's validation set, or -i/-l (KITTI images and labels).
"""

import click

from taoctl.engine.commands import deploy_command

command = deploy_command("evaluate", "taoctl.tasks.detectnet_v2.task:TASK", __doc__, options=[
    click.option("-i", "--image_dir", default=None, help="Evaluate these images (with -l) instead of the spec's."),
    click.option("-l", "--label_dir", default=None, help="KITTI labels of -i's images."),
])
