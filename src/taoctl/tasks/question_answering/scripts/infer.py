"""Answer the questions of infer_ds (SQuAD JSON) with a trained model: prediction.txt and nbest.txt."""

from taoctl.engine.commands import subtask_command

command = subtask_command("infer", "taoctl.tasks.question_answering.task:TASK", __doc__, flags="nemo_infer")
