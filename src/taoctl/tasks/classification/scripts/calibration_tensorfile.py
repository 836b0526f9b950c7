"""taoctl classification calibration_tensorfile: save INT8 calibration images for export.

Samples --max_batches x train_config.batch_size_per_gpu images of the spec's training set
(--use_validation_set: its validation set), sized and cropped as evaluation sees them, into one
.npy file (uint8, N x C x H x W). `taoctl classification export --data_type int8 --cal_data_file
FILE` then calibrates on it without the image folders.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("calibration_tensorfile", "taoctl.tasks.classification.task:TASK", __doc__)
