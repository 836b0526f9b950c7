"""taoctl yolo_v3 train: YOLOv3 from an experiment spec, TAO's flags.

Writes ``weights/yolov3_<arch><nlayers>_epoch_<epoch:03d>.tlt`` (and ``..._epoch_best.tlt``, the epoch with the best
validation mAP), status.json, metrics.csv and TensorBoard logs under ``-r``; validation mAP every
``training_config.checkpoint_interval`` epochs. Re-running the same command resumes. Pretrained
weights: ``training_config.pretrain_model_path`` (ImageNet/classification weights onto the backbone,
or a yolo_v3 model file); retrain a pruned model through ``training_config.pruned_model_path``.
``training_config.resume_model_path`` loads a model file's weights and trains from epoch 1 (--init_epoch
sets another); an interrupted run resumes exactly by re-running its command.
"""

from taoctl.engine.commands import subtask_command

command = subtask_command("train", "taoctl.tasks.yolo_v3.task:TASK", __doc__)
