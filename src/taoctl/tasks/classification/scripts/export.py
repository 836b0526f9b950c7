"""taoctl classification export: ONNX (fp32/fp16) or calibrated INT8 (QDQ ONNX + TensorRT cache).

The ONNX model has a dynamic batch axis, input ``input_1`` (normalised N x C x H x W) and
output ``predictions`` (softmax probabilities), and is checked against PyTorch on real images
(max abs difference printed). ``--data_type int8`` calibrates on --cal_image_dir (or the
spec's validation/training images) and writes the QDQ model onnxruntime runs plus a
TensorRT calibration cache; ``--engine_file`` builds a TensorRT engine when tensorrt imports;
``--gen_ds_config`` writes DeepStream's nvinfer_config.txt and labels.txt. classmap.json is
written beside the ONNX model.
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("export", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("--classmap_json", default=None, type=click.Path(dir_okay=False),
                 help="Class map for labels.txt (default: the model's)."),
])
