"""Fine-tune a trained token classifier (-m) on finetuning_ds."""

from taoctl.engine.commands import subtask_command

command = subtask_command("finetune", "taoctl.tasks.token_classification.task:TASK", __doc__, flags="nemo_finetune")
