"""Classify the spec's input_batch sentences with an exported .onnx (as infer)."""

from taoctl.engine.commands import subtask_command

command = subtask_command("infer_onnx", "taoctl.tasks.text_classification.task:TASK", __doc__, flags="nemo_infer")
