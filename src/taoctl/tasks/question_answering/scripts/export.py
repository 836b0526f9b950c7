"""Export a question answering model to ONNX (.onnx/.eonnx) or a .riva folder archive."""

from taoctl.engine.commands import subtask_command

command = subtask_command("export", "taoctl.tasks.question_answering.task:TASK", __doc__, flags="nemo_export")
