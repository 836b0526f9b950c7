"""Train an extractive question answering model on SQuAD v1.1/v2.0 JSON."""

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.question_answering.task:TASK", __doc__, flags="nemo_train")
