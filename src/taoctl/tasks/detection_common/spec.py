"""Spec kinds every detector shares (dataset_convert's DatasetExportConfig); torch-free, the launcher imports it."""

from __future__ import annotations

from taoctl.engine.spec import Range, SpecKind, at_least, fraction, non_negative, positive
from taoctl.engine.spec import load as _load
from taoctl.tasks.detection_common.proto import dataset_export_config_pb2

_STARTER = "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit"

BETA = Range(minimum=0, maximum=1, exclusive_maximum=True)  # Adam's betas (0: TAO's default)
PROBABILITY = fraction

# training_config fields every TAO detector experiment spec shares (detectnet_v2, yolo_v3, ...).
TRAINING_RANGES = {
    "training_config.batch_size_per_gpu": at_least(1),
    "training_config.num_epochs": at_least(1),
    "training_config.learning_rate.soft_start_annealing_schedule.min_learning_rate": positive,
    "training_config.learning_rate.soft_start_annealing_schedule.max_learning_rate": positive,
    "training_config.learning_rate.soft_start_annealing_schedule.soft_start": fraction,
    "training_config.learning_rate.soft_start_annealing_schedule.annealing": fraction,
    "training_config.optimizer.adam.epsilon": non_negative,
    "training_config.optimizer.adam.beta1": BETA,
    "training_config.optimizer.adam.beta2": BETA,
    "training_config.regularizer.weight": non_negative,
}

KINDS = {
    "dataset_export": SpecKind(
        "dataset_export",
        message=dataset_export_config_pb2.DatasetExportConfig,
        paths=("kitti_config.root_directory_path", "coco_config.root_directory_path", "image_directory_path"),
        corpus=("NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/detectnet_v2/dataio/dataset_specs/*",
                f"{_STARTER}/*/specs/*tfrecords*"),
    ),
}


def load(path, kind: str = "dataset_export", subtask: str | None = None, on_warning=None, overrides=()):
    """Load a dataset_convert spec: a ``DatasetExportConfig`` message."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
