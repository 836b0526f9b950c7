"""Fine-tune a trained question answering model (-m) on finetuning_ds."""

from taoctl.engine.commands import subtask_command

command = subtask_command("finetune", "taoctl.tasks.question_answering.task:TASK", __doc__, flags="nemo_finetune")
