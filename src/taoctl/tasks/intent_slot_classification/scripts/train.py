"""Train a joint intent and slot classifier on NeMo's intent/slot files (data_dir)."""

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.intent_slot_classification.task:TASK", __doc__, flags="nemo_train")
