"""classification (TAO classification_tf1 / makenet) spec kinds; torch-free, the launcher imports it."""

from __future__ import annotations

from taoctl.engine.backbones import parse_input_image_size
from taoctl.engine.spec import FieldError, Range, SpecKind, at_least, check_arch, fraction, non_negative, positive
from taoctl.engine.spec import load as _load
from taoctl.errors import TaoctlError, did_you_mean
from taoctl.tasks.classification.proto import experiment_pb2

# TAO's preprocess modes: taoctl.engine.data.imagefolder.Normalizer.MODES (torch), which
# tests/test_spec_agreement.py keeps equal to this.
PREPROCESS_MODES = ("caffe", "torch", "tf")
# reg_config: "L1", "L2" or "None" over layer types "Conv2D" and/or "Dense" (case-insensitive, as
# taoctl.engine.optim reads them).
REGULARIZERS = ("L1", "L2")
REGULARIZER_SCOPES = ("Conv2D", "Dense")


def validate_experiment(spec) -> None:
    """What train, evaluate and the rest would refuse in a loaded spec, as FieldError (``validate``)."""
    mc, tc = spec.model_config, spec.train_config
    if mc.byom_model:
        raise FieldError("model_config.byom_model", "model_config.byom_model: bring-your-own-model (TAO BYOM .tltb) "
                                                    "is not supported; use one of the built-in arch values")
    check_arch(spec, "model_config.arch", "model_config.n_layers")
    if mc.input_image_size:
        try:
            parse_input_image_size(mc.input_image_size)
        except TaoctlError as exc:  # its message starts "input_image_size ..."
            raise FieldError("model_config.input_image_size", f"model_config.{exc}") from None
    mode = tc.preprocess_mode
    if mode and mode.lower() not in PREPROCESS_MODES:
        raise FieldError("train_config.preprocess_mode",
                         f'train_config.preprocess_mode: unknown preprocessing mode "{mode}"; use caffe, torch or tf'
                         + did_you_mean(mode.lower(), PREPROCESS_MODES))
    _check_regularizer(tc.reg_config)
    if tc.HasField("distillation") and not tc.distillation.teacher_model_path:
        raise FieldError("train_config.distillation",
                         "train_config.distillation.teacher_model_path is required to distil")


def _check_regularizer(reg_config) -> None:
    kind = reg_config.type.strip()
    if not kind or kind.upper() == "NONE":
        return
    if kind.upper() not in REGULARIZERS:
        raise FieldError("train_config.reg_config.type",
                         f'train_config.reg_config.type: unknown regularizer "{kind}"; use L1, L2 or None')
    scopes = {s.strip().lower() for s in reg_config.scope.split(",") if s.strip()}
    unknown = sorted(scopes - {s.lower() for s in REGULARIZER_SCOPES})
    if unknown:
        raise FieldError("train_config.reg_config.scope", f"train_config.reg_config.scope: unknown layer type(s) "
                                                          f"{unknown}; use {', '.join(REGULARIZER_SCOPES)}")


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
        folders=("train_config.train_dataset_path", "train_config.val_dataset_path", "eval_config.eval_dataset_path"),
        validate=validate_experiment,
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
