"""taoctl deploy yolo_v3 gen_trt_engine: a TensorRT engine from an exported .onnx (TAO 5's tao-deploy).

Writes --engine_file (default: the model's name with .engine) and its record <engine>.json. The
ONNX's NMS (ONNX NonMaxSuppression, TAO's BatchedNMS outputs) is built as TensorRT's
EfficientNMS_TRT plugin with the same outputs. INT8 of an fp32 ONNX calibrates the network (not
the NMS) on --cal_image_dir, --cal_data_file or the spec's data (-e).
"""

from taoctl.engine.commands import deploy_command

command = deploy_command("gen_trt_engine", "taoctl.tasks.yolo_v3.task:TASK", __doc__)
