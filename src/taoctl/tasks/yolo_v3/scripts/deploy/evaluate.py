"""taoctl deploy yolo_v3 evaluate: AP per class and mAP of an engine, as `taoctl model yolo_v3 evaluate`.

-m is a TensorRT engine from gen_trt_engine or an exported .onnx, whose BatchedNMS outputs
(num_detections, nmsed_boxes, nmsed_scores, nmsed_classes) are read; the data is the spec's
validation set, or -i/-l (KITTI images and labels).
"""

import click

from taoctl.engine.commands import deploy_command

command = deploy_command("evaluate", "taoctl.tasks.yolo_v3.task:TASK", __doc__, options=[
    click.option("-i", "--image_dir", default=None, help="Evaluate these images (with -l) instead of the spec's."),
    click.option("-l", "--label_dir", default=None, help="KITTI labels of -i's images."),
])
