"""Answer the questions of infer_ds with an exported .onnx (as infer)."""

from taoctl.engine.commands import subtask_command

command = subtask_command("infer_onnx", "taoctl.tasks.question_answering.task:TASK", __doc__, flags="nemo_infer")
