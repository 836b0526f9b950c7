"""detectnet_v2 spec kinds (experiment, inference, and the shared dataset_convert spec); torch-free."""

from __future__ import annotations

from taoctl.engine.spec import SpecKind
from taoctl.engine.spec import load as _load
from taoctl.tasks.detectnet_v2.proto import experiment_pb2
from taoctl.tasks.detection_common.spec import KINDS as _DETECTION_KINDS

_STARTER = "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit/detectnet_v2/specs"
_BACKEND = "NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/detectnet_v2/experiment_specs"
_WHITEPAPER = "NVIDIA-AI-IOT/TAO-Toolkit-Whitepaper-use-cases/workspace"

KINDS = {
    "experiment": SpecKind(
        "experiment",
        message=experiment_pb2.Experiment,
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
        # coco_tfrecords.txt is a training spec on COCO tfrecords, despite its name.
        corpus=(f"{_STARTER}/detectnet_v2_*train_*", f"{_BACKEND}/default_spec.txt",
                f"{_BACKEND}/coco_tfrecords.txt", f"{_WHITEPAPER}/peoplenet_*/experiments/*train*_spec.txt"),
        help="experiment spec (-e) of train, evaluate, prune, export: dataset_config, model_config, "
             "training_config, cost_function_config, postprocessing_config ...",
    ),
    "inference": SpecKind(
        "inference",
        message=experiment_pb2.Inference,
        required=("inferencer_config.target_classes",),
        paths=("inferencer_config.tlt_config.model", "inferencer_config.tensorrt_config.etlt_model"),
        corpus=(f"{_STARTER}/detectnet_v2_inference_*", f"{_BACKEND}/inferencer_spec_*",
                f"{_WHITEPAPER}/peoplenet_helmet/experiments/inf_*_spec.txt"),
        help="inference spec (-e of inference): inferencer_config, bbox_handler_config",
    ),
    **_DETECTION_KINDS,
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None):
    """Load a detectnet_v2 spec: ``Experiment``, ``Inference`` or ``DatasetExportConfig``."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask)
