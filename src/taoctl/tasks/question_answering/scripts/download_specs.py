"""Write question_answering's default spec files (train, finetune, evaluate, infer, export) into -o."""

from taoctl.engine.commands import subtask_command

command = subtask_command("download_specs", "taoctl.tasks.question_answering.task:TASK", __doc__, flags="download_specs")
