"""Export an intent and slot classifier to ONNX (.onnx/.eonnx) or a .riva folder archive."""

from taoctl.engine.commands import subtask_command

command = subtask_command("export", "taoctl.tasks.intent_slot_classification.task:TASK", __doc__, flags="nemo_export")
