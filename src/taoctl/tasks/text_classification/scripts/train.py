"""Train a text classifier (an encoder fine-tuned with a classification head) on NeMo TSV data."""

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.text_classification.task:TASK", __doc__, flags="nemo_train")
