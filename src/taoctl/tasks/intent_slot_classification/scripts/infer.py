"""Predict the intent and slots of the spec's input_batch queries (model file or .onnx)."""

from taoctl.engine.commands import subtask_command

command = subtask_command("infer", "taoctl.tasks.intent_slot_classification.task:TASK", __doc__, flags="nemo_infer")
