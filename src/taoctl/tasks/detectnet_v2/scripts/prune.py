"""taoctl detectnet_v2 prune: structured channel pruning with TAO's prune flags.

Layers tied by residual adds keep one channel set (-eq); the output_cov and output_bbox heads
keep their widths. Retrain the pruned file through model_config.pretrained_model_file with
load_graph: true.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("prune", "taoctl.tasks.detectnet_v2.task:TASK", __doc__)
