"""yolo_v3 spec kinds (experiment, and the shared dataset_convert spec); torch-free."""

from __future__ import annotations

from taoctl.engine.spec import SpecKind
from taoctl.engine.spec import load as _load
from taoctl.tasks.detection_common.spec import KINDS as _DETECTION_KINDS
from taoctl.tasks.yolo_v3.proto import experiment_pb2

_STARTER = "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit/yolo_v3/specs"
_BACKEND = "NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/yolo_v3/experiment_specs"

KINDS = {
    "experiment": SpecKind(
        "experiment",
        message=experiment_pb2.Experiment,
        required=("yolov3_config.arch", "yolov3_config.big_anchor_shape", "yolov3_config.mid_anchor_shape",
                  "yolov3_config.small_anchor_shape"),
        required_for={
            "train": ("dataset_config.data_sources", "training_config.batch_size_per_gpu",
                      "training_config.num_epochs", "training_config.learning_rate", "training_config.optimizer"),
        },
        paths=("dataset_config.data_sources.label_directory_path", "dataset_config.data_sources.tfrecords_path",
               "dataset_config.data_sources.image_directory_path",
               "dataset_config.validation_data_sources.label_directory_path",
               "dataset_config.validation_data_sources.tfrecords_path",
               "dataset_config.validation_data_sources.image_directory_path",
               "training_config.resume_model_path", "training_config.pretrain_model_path",
               "training_config.pruned_model_path"),
        corpus=(f"{_STARTER}/yolo_v3_*train_*", f"{_BACKEND}/coco_tfrecords.txt"),
        help="experiment spec (-e) of train, evaluate, inference, prune, export, kmeans: yolov3_config, "
             "dataset_config, augmentation_config, training_config, eval_config, nms_config",
    ),
    **_DETECTION_KINDS,
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None):
    """Load a yolo_v3 spec: ``Experiment`` or ``DatasetExportConfig``."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask)
