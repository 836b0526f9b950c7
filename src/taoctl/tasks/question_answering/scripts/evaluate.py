"""Evaluate a question answering model (model file or .onnx) on test_ds: exact match and F1."""

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.question_answering.task:TASK", __doc__, flags="nemo_evaluate")
