"""Fine-tune a trained punctuation and capitalisation model (-m) on finetuning_ds."""

from taoctl.engine.commands import subtask_command

command = subtask_command("finetune", "taoctl.tasks.punctuation_and_capitalization.task:TASK", __doc__, flags="nemo_finetune")
