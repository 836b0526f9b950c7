"""Convert raw text (source_data_dir) to NeMo's text_*.txt and labels_*.txt with TAO's 2-character punctuation/capitalisation labels."""

from taoctl.engine.commands import subtask_command

command = subtask_command("dataset_convert", "taoctl.tasks.punctuation_and_capitalization.task:TASK", __doc__, flags="nemo_dataset_convert")
