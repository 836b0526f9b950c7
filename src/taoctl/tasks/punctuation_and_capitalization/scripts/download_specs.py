"""Write punctuation_and_capitalization's default spec files (dataset_convert, train, finetune, evaluate, infer, export) into -o."""

from taoctl.engine.commands import subtask_command

command = subtask_command("download_specs", "taoctl.tasks.punctuation_and_capitalization.task:TASK", __doc__, flags="download_specs")
