"""taoctl detectnet_v2 inference: detect objects in a folder of images.

Takes TAO's inference spec (inferencer_config + bbox_handler_config: classes, clustering, colours,
kitti_dump, line width) or the experiment spec (postprocessing_config). The model is -m or
inferencer_config.tlt_config.model (a model file or an exported .onnx). Writes
``images_annotated/`` and KITTI ``labels/`` (the confidence as a 16th field) under -r.
"""

import click

from taoctl.engine.commands import subtask_command

command = subtask_command("inference", "taoctl.tasks.detectnet_v2.task:TASK", __doc__, options=[
    click.option("-m", "--model_path", default=None,
                 help="Model file or .onnx (default: the inference spec's inferencer_config.tlt_config.model)."),
    click.option("-i", "--image_dir", required=True, help="Folder of images (searched recursively)."),
    click.option("-r", "--results_dir", required=True, type=click.Path(file_okay=False),
                 help="Folder for images_annotated/, labels/ and status.json."),
    click.option("-b", "--batch_size", type=int, default=None, help="Batch size (default: the spec's or 1)."),
])
