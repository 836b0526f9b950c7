"""Fine-tune a trained text classifier (-m) on finetuning_ds."""

from taoctl.engine.commands import subtask_command

command = subtask_command("finetune", "taoctl.tasks.text_classification.task:TASK", __doc__, flags="nemo_finetune")
