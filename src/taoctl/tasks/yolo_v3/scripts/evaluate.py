"""taoctl yolo_v3 evaluate: AP per class and mAP, as TAO prints them.

Evaluates a model file or its exported .onnx on the spec's validation data (-i/-l: a KITTI image
and label folder instead), decoded and NMS'd with nms_config and matched with eval_config.
Writes results.json (and PR_curve.png with eval_config.visualize_pr_curve) to -r (default: the
model's folder).
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.yolo_v3.task:TASK", __doc__, options=[
    click.option("-i", "--image_dir", default=None, help="Evaluate these images (with -l) instead of the spec's."),
    click.option("-l", "--label_dir", default=None, help="KITTI labels of -i's images."),
])
