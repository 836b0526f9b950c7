"""taoctl yolo_v3 export: ONNX of the network, its decoding and NMS, fp32/fp16/int8, DeepStream config.

The ONNX model has a dynamic batch axis, input ``Input`` (RGB, normalised as in training) and
TAO's BatchedNMS outputs, with nms_config's confidence_threshold, clustering_iou_threshold and
top_k (K): ``num_detections`` [batch, 1] int32, ``nmsed_boxes`` [batch, K, 4] (x1, y1, x2, y2
normalised by the input width and height), ``nmsed_scores`` [batch, K] and ``nmsed_classes``
[batch, K] (float class indices), zero past num_detections. The NMS is ONNX's NonMaxSuppression
(per class, as `evaluate` does; onnxruntime runs it, a TensorRT engine gets EfficientNMS_TRT) and
stays float in fp16 and int8 exports. ``--gen_ds_config`` writes nvinfer_config.txt for
DeepStream's NvDsInferParseCustomBatchedNMSTLT parser (deepstream_tao_apps' post_processor
library) and labels.txt; labels.txt is written beside the model.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("export", "taoctl.tasks.yolo_v3.task:TASK", __doc__)
