"""classification (TAO classification_tf1 / makenet) spec kinds; torch-free, the launcher imports it."""

from __future__ import annotations

from taoctl.engine.spec import Range, SpecKind, at_least, fraction, non_negative, positive
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
        # proto3 reads 0 as "not given" and the task code substitutes TAO's default, so a field
        # whose 0 means "default" allows 0 here.
        ranges={
            "model_config.dropout": Range(minimum=0, maximum=1, exclusive_maximum=True),
            "model_config.batch_norm_config.momentum": fraction,
            "model_config.batch_norm_config.epsilon": non_negative,
            "train_config.batch_size_per_gpu": at_least(1),
            "train_config.n_epochs": at_least(1),
            # The optimizers' lr is ignored (lr_config sets the rate, as in TAO) but must be a number.
            "train_config.optimizer.sgd.lr": non_negative,
            "train_config.optimizer.adam.lr": non_negative,
            "train_config.optimizer.rmsprop.lr": non_negative,
            "train_config.optimizer.sgd.momentum": fraction,
            "train_config.optimizer.sgd.decay": non_negative,
            "train_config.optimizer.adam.beta_1": Range(minimum=0, maximum=1, exclusive_maximum=True),
            "train_config.optimizer.adam.beta_2": Range(minimum=0, maximum=1, exclusive_maximum=True),
            "train_config.optimizer.adam.epsilon": non_negative,
            "train_config.optimizer.adam.decay": non_negative,
            "train_config.optimizer.rmsprop.rho": fraction,
            "train_config.optimizer.rmsprop.epsilon": non_negative,
            "train_config.optimizer.rmsprop.decay": non_negative,
            "train_config.reg_config.weight_decay": non_negative,
            "train_config.lr_config.step.learning_rate": positive,
            "train_config.lr_config.step.gamma": non_negative,
            "train_config.lr_config.soft_anneal.learning_rate": positive,
            "train_config.lr_config.soft_anneal.soft_start": fraction,
            "train_config.lr_config.soft_anneal.annealing_divider": non_negative,
            "train_config.lr_config.soft_anneal.annealing_points": fraction,
            "train_config.lr_config.cosine.learning_rate": positive,
            "train_config.lr_config.cosine.min_lr_ratio": fraction,
            "train_config.lr_config.cosine.soft_start": fraction,
            "train_config.label_smoothing": fraction,
            "train_config.mixup_alpha": non_negative,
            "train_config.model_parallelism": fraction,
            "train_config.distillation.alpha": fraction,
            "train_config.distillation.temperature": non_negative,
            "eval_config.batch_size": at_least(1),
            "eval_config.top_k": at_least(1),
            "eval_config.n_workers": non_negative,
        },
        corpus=("NVIDIA/tao_tensorflow1_backend/nvidia_tao_tf1/cv/makenet/experiment_specs/*",
                "NVIDIA/tao_tutorials/notebooks/tao_launcher_starter_kit/classification_tf1/*/specs/*.cfg"),
    ),
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    """Load a classification spec file: an ``experiment_pb2.Experiment`` for "experiment"."""
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
