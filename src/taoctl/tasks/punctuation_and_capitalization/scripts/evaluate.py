"""Evaluate a punctuation and capitalisation model (model file or .onnx) on test_ds: punctuation and capitalization reports."""

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.punctuation_and_capitalization.task:TASK", __doc__, flags="nemo_evaluate")
