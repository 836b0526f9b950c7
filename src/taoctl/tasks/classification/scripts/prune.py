"""taoctl classification prune: structured channel pruning of a trained model, TAO's flags.

Keeps the filters whose normalised L2 norm exceeds -pth, equalising layers tied by residual
adds/concatenations (-eq), rounding kept channels to -pg and keeping at least -nf. The output
.tlt records every layer's width, so it loads with no extra code and retrains through
train_config.pretrained_model_path. taoctl extensions: --criterion L2_bn scores filters with
their BatchNorm folded in; --cal_image_dir refits the layers fed by pruned channels so they
reproduce the unpruned model's outputs on those images; --classifier_input_ratio also prunes the
classifier's input features (the last layer's channels, which filter norms cannot rank) by how
much they move the logits on those images.
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("prune", "taoctl.tasks.classification.task:TASK", __doc__, options=[
    click.option("--classifier_input_ratio", type=float, default=None,
                 help="Keep this fraction of the classifier's input features (and the channels of the layer that "
                      "makes them), those that move the logits most on the --cal_image_dir images (taoctl "
                      "extension)."),
])
