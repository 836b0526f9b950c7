"""taoctl detectnet_v2 export: ONNX with TAO's outputs, fp32/fp16/int8, DeepStream config.

The ONNX model has a dynamic batch axis, input ``input_1`` (RGB scaled to 0..1) and outputs
``output_cov/Sigmoid`` and ``output_bbox/BiasAdd``, checked against PyTorch on real images.
``--data_type int8`` calibrates on --cal_image_dir / --cal_data_file (or the spec's images);
``--gen_ds_config`` writes nvinfer_config.txt (network-type 0, the spec's clustering as
cluster-mode and per-class attributes) and labels.txt; labels.txt is written beside the model.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("export", "taoctl.tasks.detectnet_v2.task:TASK", __doc__)
