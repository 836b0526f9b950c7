"""taoctl deploy classification gen_trt_engine: a TensorRT engine from an exported .onnx (TAO 5's tao-deploy).

Writes --engine_file (default: the model's name with .engine) and its record <engine>.json
(TensorRT version, GPU, inputs, outputs, data type). INT8 of an fp32 ONNX calibrates on
--cal_image_dir, --cal_data_file or the spec's data (-e); an int8 export needs no calibration.
"""

from taoctl.engine.commands import deploy_command

command = deploy_command("gen_trt_engine", "taoctl.tasks.classification.task:TASK", __doc__)
