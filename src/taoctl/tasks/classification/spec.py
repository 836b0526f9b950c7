"""classification (TAO classification_tf1 / makenet) spec kinds; torch-free, the launcher imports it."""

from __future__ import annotations

from taoctl.engine.spec import SpecKind
from taoctl.engine.spec import load as _load
from taoctl.tasks.classification.proto import experiment_pb2

KINDS = {
    "experiment": SpecKind(
        "experiment",
        message=experiment_pb2.Experiment,
        # Every subtask builds the model from model_config; TAO reads input_image_size as "C,H,W".
        required=("model_config.arch", "model_config.input_image_size"),
        required_for={
            "train": ("train_config.train_dataset_path", "train_config.val_dataset_path",
                      "train_config.optimizer", "train_config.lr_config",
                      "train_config.batch_size_per_gpu", "train_config.n_epochs"),
            # evaluate's model may come from -m instead of eval_config.model_path.
            "evaluate": ("eval_config.eval_dataset_path",),
        },
        paths=("train_config.train_dataset_path", "train_config.val_dataset_path",
               "train_config.pretrained_model_path", "eval_config.eval_dataset_path",
               "eval_config.model_path", "train_config.distillation.teacher_model_path"),
        corpus=("NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/makenet/experiment_specs/*",
                "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit/classification_tf1/*/specs/*.cfg"),
        help="experiment spec (-e) of train, evaluate, inference, prune, export: "
             "model_config, train_config, eval_config",
    ),
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None):
    """Load a classification spec file: an ``experiment_pb2.Experiment`` for "experiment"."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask)
