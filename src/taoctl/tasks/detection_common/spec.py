"""Spec kinds every detector shares (dataset_convert's DatasetExportConfig); torch-free, the launcher imports it."""

from __future__ import annotations

from taoctl.engine.spec import SpecKind
from taoctl.engine.spec import load as _load
from taoctl.tasks.detection_common.proto import dataset_export_config_pb2

_STARTER = "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit"

KINDS = {
    "dataset_export": SpecKind(
        "dataset_export",
        message=dataset_export_config_pb2.DatasetExportConfig,
        paths=("kitti_config.root_directory_path", "coco_config.root_directory_path", "image_directory_path"),
        corpus=("NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/detectnet_v2/dataio/dataset_specs/*",
                f"{_STARTER}/*/specs/*tfrecords*"),
        help="dataset_convert spec (-d): kitti_config or coco_config, image_directory_path, "
             "target_class_mapping, sample_modifier_config",
    ),
}


def load(path, kind: str = "dataset_export", subtask: str | None = None, on_warning=None):
    """Load a dataset_convert spec: a ``DatasetExportConfig`` message."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask)
