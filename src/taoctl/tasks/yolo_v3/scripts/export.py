"""taoctl yolo_v3 export: ONNX of the network and its decoding, fp32/fp16/int8, DeepStream config.

The ONNX model has a dynamic batch axis, input ``Input`` (RGB, normalised as in training) and
two outputs over every anchor of the three scales (N = 3 x (H/8 x W/8 + H/16 x W/16 + H/32 x W/32)):
``boxes`` [batch, N, 4] (x1, y1, x2, y2 in input pixels) and ``scores`` [batch, N, classes]
(objectness x class probability). NMS is not in the graph (TAO 5's BatchedNMS outputs are not
produced): apply nms_config to these outputs, as `evaluate` does on an .onnx. ``--gen_ds_config``
writes nvinfer_config.txt (network-type 0, cluster-mode 2 with nms_config's thresholds; a custom
bounding-box parser is needed) and labels.txt; labels.txt is written beside the model.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("export", "taoctl.tasks.yolo_v3.task:TASK", __doc__)
