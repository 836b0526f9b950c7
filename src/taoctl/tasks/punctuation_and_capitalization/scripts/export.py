"""Export a punctuation and capitalisation model to ONNX (.onnx/.eonnx) or a .riva folder archive."""

from taoctl.engine.commands import subtask_command

command = subtask_command("export", "taoctl.tasks.punctuation_and_capitalization.task:TASK", __doc__, flags="nemo_export")
