"""Train a token classifier (NER: a tag per word) on NeMo's text/labels files."""

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.token_classification.task:TASK", __doc__, flags="nemo_train")
