"""Evaluate a token classifier (model file or .onnx) on test_ds: per-tag and entity-level precision, recall, F1."""

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.token_classification.task:TASK", __doc__, flags="nemo_evaluate")
