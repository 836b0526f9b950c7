"""Tag the spec's input_batch sentences with a trained model (model file or .onnx): word[TAG] markup."""

from taoctl.engine.commands import subtask_command

command = subtask_command("infer", "taoctl.tasks.token_classification.task:TASK", __doc__, flags="nemo_infer")
