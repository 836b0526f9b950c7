"""Train a punctuation and capitalisation model on NeMo's text/labels files (data_dir)."""

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.punctuation_and_capitalization.task:TASK", __doc__, flags="nemo_train")
