"""Fine-tune a trained intent and slot classifier (-m) on finetuning_ds."""

from taoctl.engine.commands import subtask_command

command = subtask_command("finetune", "taoctl.tasks.intent_slot_classification.task:TASK", __doc__, flags="nemo_finetune")
