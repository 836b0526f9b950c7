"""detectnet_v2 spec kinds (experiment, inference, and the shared dataset_convert spec); torch-free."""

from __future__ import annotations

from taoctl.engine.spec import Range, SpecKind, at_least, check_arch, fraction, non_negative, positive
from taoctl.engine.spec import load as _load
from taoctl.tasks.detectnet_v2.proto import experiment_pb2
from taoctl.tasks.detection_common.spec import KINDS as _DETECTION_KINDS
from taoctl.tasks.detection_common.spec import PROBABILITY, TRAINING_RANGES

_STARTER = "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit/detectnet_v2/specs"
_BACKEND = "NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/detectnet_v2/experiment_specs"
_WHITEPAPER = "NVIDIA-AI-IOT/TAO-Toolkit-Whitepaper-use-cases/workspace"
_AUGMENT = "augmentation_config"
_CLUSTERING = "postprocessing_config.target_class_config.clustering_config"
_HANDLER_CLUSTERING = "bbox_handler_config.classwise_bbox_handler_config.clustering_config"


def _clustering_ranges(prefix: str) -> dict:
    return {f"{prefix}.coverage_threshold": fraction, f"{prefix}.minimum_bounding_box_height": non_negative,
            f"{prefix}.dbscan_eps": fraction, f"{prefix}.nms_iou_threshold": fraction,
            f"{prefix}.nms_confidence_threshold": fraction}


def validate_experiment(spec) -> None:
    """``model_config.arch`` (with ``model_config.num_layers``) must name a registered backbone (``validate``)."""
    check_arch(spec, "model_config.arch", "model_config.num_layers")


KINDS = {
    "experiment": SpecKind(
        "experiment",
        message=experiment_pb2.Experiment,
        validate=validate_experiment,
        required=("model_config.arch",),
        required_for={
            "train": ("dataset_config.data_sources", "training_config.batch_size_per_gpu",
                      "training_config.num_epochs", "training_config.learning_rate",
                      "cost_function_config.target_classes"),
        },
        paths=("dataset_config.data_sources.tfrecords_path", "dataset_config.data_sources.image_directory_path",
               "dataset_config.validation_data_source.tfrecords_path",
               "dataset_config.validation_data_source.image_directory_path",
               "model_config.pretrained_model_file"),
        ranges={
            **TRAINING_RANGES,
            "training_config.learning_rate.early_stopping_annealing_schedule.min_learning_rate": positive,
            "training_config.learning_rate.early_stopping_annealing_schedule.max_learning_rate": positive,
            "dataset_config.data_sources.source_weight": non_negative,
            f"{_AUGMENT}.preprocessing.min_bbox_width": non_negative,
            f"{_AUGMENT}.preprocessing.min_bbox_height": non_negative,
            f"{_AUGMENT}.preprocessing.scale_width": non_negative,
            f"{_AUGMENT}.preprocessing.scale_height": non_negative,
            f"{_AUGMENT}.spatial_augmentation.hflip_probability": PROBABILITY,
            f"{_AUGMENT}.spatial_augmentation.vflip_probability": PROBABILITY,
            f"{_AUGMENT}.spatial_augmentation.rotate_probability": PROBABILITY,
            f"{_AUGMENT}.spatial_augmentation.zoom_min": non_negative,
            f"{_AUGMENT}.spatial_augmentation.zoom_max": non_negative,
            f"{_AUGMENT}.spatial_augmentation.translate_max_x": non_negative,
            f"{_AUGMENT}.spatial_augmentation.translate_max_y": non_negative,
            f"{_AUGMENT}.spatial_augmentation.rotate_rad_max": non_negative,
            f"{_AUGMENT}.color_augmentation.color_shift_stddev": non_negative,
            f"{_AUGMENT}.color_augmentation.hue_rotation_max": Range(minimum=0, maximum=360),
            f"{_AUGMENT}.color_augmentation.saturation_shift_max": fraction,
            f"{_AUGMENT}.color_augmentation.contrast_scale_max": fraction,
            f"{_AUGMENT}.color_augmentation.contrast_center": fraction,
            "model_config.dropout_rate": Range(minimum=0, maximum=1, exclusive_maximum=True),
            "evaluation_config.minimum_detection_ground_truth_overlap": fraction,
            **_clustering_ranges(_CLUSTERING),
            "postprocessing_config.target_class_config.confidence_config.confidence_threshold": fraction,
            "cost_function_config.target_classes.class_weight": non_negative,
            "cost_function_config.target_classes.coverage_foreground_weight": non_negative,
            "cost_function_config.target_classes.objectives.initial_weight": non_negative,
            "cost_function_config.target_classes.objectives.weight_target": non_negative,
            "cost_function_config.max_objective_weight": non_negative,
            "cost_function_config.min_objective_weight": non_negative,
            "bbox_rasterizer_config.target_class_config.cov_center_x": fraction,
            "bbox_rasterizer_config.target_class_config.cov_center_y": fraction,
            "bbox_rasterizer_config.target_class_config.cov_radius_x": non_negative,
            "bbox_rasterizer_config.target_class_config.cov_radius_y": non_negative,
            "bbox_rasterizer_config.target_class_config.bbox_min_radius": non_negative,
            "bbox_rasterizer_config.deadzone_radius": fraction,
            "training_config.visualizer.target_class_config.coverage_threshold": fraction,
        },
        # coco_tfrecords.txt is a training spec on COCO tfrecords, despite its name.
        corpus=(f"{_STARTER}/detectnet_v2_*train_*", f"{_BACKEND}/default_spec.txt",
                f"{_BACKEND}/coco_tfrecords.txt", f"{_WHITEPAPER}/peoplenet_*/experiments/*train*_spec.txt"),
    ),
    "inference": SpecKind(
        "inference",
        message=experiment_pb2.Inference,
        required=("inferencer_config.target_classes",),
        paths=("inferencer_config.tlt_config.model", "inferencer_config.tensorrt_config.etlt_model"),
        ranges={
            "inferencer_config.batch_size": at_least(1),
            "inferencer_config.image_height": at_least(1),
            "inferencer_config.image_width": at_least(1),
            **_clustering_ranges(_HANDLER_CLUSTERING),
            "bbox_handler_config.classwise_bbox_handler_config.bbox_color.R": Range(minimum=0, maximum=255),
            "bbox_handler_config.classwise_bbox_handler_config.bbox_color.G": Range(minimum=0, maximum=255),
            "bbox_handler_config.classwise_bbox_handler_config.bbox_color.B": Range(minimum=0, maximum=255),
            "bbox_handler_config.overlay_linewidth": non_negative,
        },
        corpus=(f"{_STARTER}/detectnet_v2_inference_*", f"{_BACKEND}/inferencer_spec_*",
                f"{_WHITEPAPER}/peoplenet_helmet/experiments/inf_*_spec.txt"),
    ),
    **_DETECTION_KINDS,
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    """Load a detectnet_v2 spec: ``Experiment``, ``Inference`` or ``DatasetExportConfig``."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
