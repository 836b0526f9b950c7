"""Restore punctuation and capitals of the spec's input_batch (model file or .onnx)."""

from taoctl.engine.commands import subtask_command

command = subtask_command("infer", "taoctl.tasks.punctuation_and_capitalization.task:TASK", __doc__, flags="nemo_infer")
