"""taoctl yolo_v3 calibration_tensorfile: save INT8 calibration images for export.

Samples --max_batches x training_config.batch_size_per_gpu images of the spec's training set
(--use_validation_set: its validation set), resized to the network input, into one .npy file
(uint8, N x 3 x H x W) that `export --data_type int8 --cal_data_file FILE` calibrates on.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("calibration_tensorfile", "taoctl.tasks.yolo_v3.task:TASK", __doc__)
