"""Evaluate a text classifier (model file or its exported .onnx) on test_ds: per-class precision, recall, F1."""

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.text_classification.task:TASK", __doc__, flags="nemo_evaluate")
