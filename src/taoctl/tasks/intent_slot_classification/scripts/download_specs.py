"""Write intent_slot_classification's default spec files (train, finetune, evaluate, infer, export) into -o."""

from taoctl.engine.commands import subtask_command

command = subtask_command("download_specs", "taoctl.tasks.intent_slot_classification.task:TASK", __doc__, flags="download_specs")
