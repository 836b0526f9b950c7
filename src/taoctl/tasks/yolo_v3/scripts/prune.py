"""taoctl yolo_v3 prune: structured channel pruning with TAO's prune flags.

Layers tied by residual adds or by the neck's concatenations keep one channel set (-eq); the three
output convolutions (conv_sm_object, conv_mid_object, conv_big_object) keep their widths. Retrain
the pruned file through training_config.pruned_model_path.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("prune", "taoctl.tasks.yolo_v3.task:TASK", __doc__)
