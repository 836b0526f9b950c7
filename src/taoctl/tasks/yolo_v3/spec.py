"""yolo_v3 spec kinds (experiment, and the shared dataset_convert spec); torch-free."""

from __future__ import annotations

from taoctl.engine.spec import FieldError, SpecKind, at_least, check_arch, fraction, non_negative, positive
from taoctl.engine.spec import load as _load
from taoctl.tasks.detection_common.spec import KINDS as _DETECTION_KINDS
from taoctl.tasks.detection_common.spec import PROBABILITY, TRAINING_RANGES
from taoctl.tasks.yolo_v3.proto import experiment_pb2

_STARTER = "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit/yolo_v3/specs"
_BACKEND = "NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/yolo_v3/experiment_specs"


def validate_experiment(spec) -> None:
    """``yolov3_config.arch`` (with ``yolov3_config.nlayers``) must name a registered backbone, and each
    anchor string must be a list of positive (width, height) pairs (``validate``)."""
    from taoctl.engine.detection.anchors import parse_anchor_shape
    from taoctl.errors import TaoctlError

    check_arch(spec, "yolov3_config.arch", "yolov3_config.nlayers")
    for name in ("small_anchor_shape", "mid_anchor_shape", "big_anchor_shape"):
        text = getattr(spec.yolov3_config, name)
        if text:  # unset is ``required``'s
            try:
                parse_anchor_shape(text, f"yolov3_config.{name}")
            except TaoctlError as exc:
                raise FieldError(f"yolov3_config.{name}", str(exc)) from None


KINDS = {
    "experiment": SpecKind(
        "experiment",
        message=experiment_pb2.Experiment,
        validate=validate_experiment,
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
        ranges={
            **TRAINING_RANGES,
            "training_config.learning_rate.soft_start_cosine_annealing_schedule.max_learning_rate": positive,
            "training_config.learning_rate.soft_start_cosine_annealing_schedule.min_learning_rate": positive,
            "training_config.learning_rate.soft_start_cosine_annealing_schedule.soft_start": fraction,
            "training_config.optimizer.sgd.momentum": fraction,
            "training_config.optimizer.rmsprop.rho": fraction,
            "training_config.optimizer.rmsprop.momentum": fraction,
            "training_config.optimizer.rmsprop.epsilon": non_negative,
            "dataset_config.data_sources.source_weight": non_negative,
            # TAO's YOLO color jitter: hue shift in [0, 1]; saturation and exposure are scale factors
            # drawn from [1/s, s], so s < 1 inverts the range.
            "augmentation_config.hue": fraction,
            "augmentation_config.saturation": at_least(1),
            "augmentation_config.exposure": at_least(1),
            "augmentation_config.vertical_flip": PROBABILITY,
            "augmentation_config.horizontal_flip": PROBABILITY,
            "augmentation_config.jitter": fraction,
            "augmentation_config.output_width": at_least(1),
            "augmentation_config.output_height": at_least(1),
            "augmentation_config.randomize_input_shape_period": non_negative,
            "yolov3_config.matching_neutral_box_iou": fraction,
            "yolov3_config.loss_loc_weight": non_negative,
            "yolov3_config.loss_neg_obj_weights": non_negative,
            "yolov3_config.loss_class_weights": non_negative,
            "eval_config.batch_size": at_least(1),
            "eval_config.matching_iou_threshold": fraction,
            "nms_config.confidence_threshold": fraction,
            "nms_config.clustering_iou_threshold": fraction,
        },
        corpus=(f"{_STARTER}/yolo_v3_*train_*", f"{_BACKEND}/coco_tfrecords.txt"),
    ),
    **_DETECTION_KINDS,
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    """Load a yolo_v3 spec: ``Experiment`` or ``DatasetExportConfig``."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
