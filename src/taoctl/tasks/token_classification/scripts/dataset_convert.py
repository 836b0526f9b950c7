"""Convert CoNLL/IOB column files (source_data_dir) to NeMo's text_*.txt, labels_*.txt and label_ids.csv (target_data_dir)."""

from taoctl.engine.commands import subtask_command

command = subtask_command("dataset_convert", "taoctl.tasks.token_classification.task:TASK", __doc__, flags="nemo_dataset_convert")
