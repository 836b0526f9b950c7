"""Evaluate an intent and slot classifier (model file or .onnx) on test_ds: intent and slot reports."""

from taoctl.engine.commands import subtask_command

command = subtask_command("evaluate", "taoctl.tasks.intent_slot_classification.task:TASK", __doc__, flags="nemo_evaluate")
