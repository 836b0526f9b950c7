"""What the classification subtasks share: spec -> model/data/optimizer, model files, predictors.

A classification model file's manifest records everything inference needs without the spec:
``arch`` (create_model's arguments), ``class_map`` ({name: index}), ``input_shape`` [C, H, W],
``preprocess`` (mode, image_mean) and ``interpolation``. The evaluate/inference/export
subtasks work from a ``.tlt`` file or an exported ``.onnx`` (fp32/fp16/int8) through
:class:`Predictor`; an ``.onnx`` carries no manifest, so its preprocessing comes from the spec.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taoctl.engine import modelfile
from taoctl.engine.backbones import create_model, parse_input_image_size
from taoctl.engine.data import imagefolder
from taoctl.engine.data.imagefolder import Normalizer
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic

TASK = "classification"
INTERPOLATION_NAMES = {0: "BILINEAR", 1: "BICUBIC"}


# --------------------------------------------------------------------------- spec -> model
def model_arguments(model_config) -> dict:
    """create_model's keyword arguments from ``model_config`` (what the manifest records)."""
    if model_config.byom_model:
        raise TaoctlError("model_config.byom_model: bring-your-own-model (TAO BYOM .tltb) is not supported; "
                          "use one of the built-in arch values")
    args = {
        "arch": model_config.arch,
        "n_layers": int(model_config.n_layers) or None,
        "input_image_size": model_config.input_image_size,
        "use_batch_norm": bool(model_config.use_batch_norm),
        "use_bias": bool(model_config.use_bias),
        "all_projections": bool(model_config.all_projections),
        "use_pooling": bool(model_config.use_pooling),
        "retain_head": bool(model_config.retain_head),
        "dropout": float(model_config.dropout) if model_config.dropout else None,
    }
    if model_config.HasField("batch_norm_config"):
        args["batch_norm_config"] = {"momentum": model_config.batch_norm_config.momentum,
                                     "epsilon": model_config.batch_norm_config.epsilon}
    if model_config.HasField("activation") and model_config.activation.activation_type:
        args["activation"] = {"activation_type": model_config.activation.activation_type,
                              "activation_parameters": dict(model_config.activation.activation_parameters)}
    return args


def input_shape(model_config) -> tuple[int, int, int]:
    return parse_input_image_size(model_config.input_image_size)


def interpolation(model_config) -> str:
    return INTERPOLATION_NAMES.get(int(model_config.resize_interpolation_method), "BILINEAR")


def build_model(arguments: dict, num_classes: int, freeze_blocks=(), freeze_bn: bool = False) -> nn.Module:
    return create_model(num_classes=num_classes, freeze_blocks=freeze_blocks, freeze_bn=freeze_bn, **arguments)


def normalizer_from_manifest(manifest: dict) -> Normalizer:
    """The preprocessing a model file was trained with."""
    pre = manifest.get("preprocess", {})
    return Normalizer(pre.get("mode", "caffe"), manifest["input_shape"][0], pre.get("image_mean") or None)


def normalizer_from_spec(train_config, channels: int) -> Normalizer:
    return Normalizer(train_config.preprocess_mode or "caffe", channels, dict(train_config.image_mean) or None)


def preprocess_record(train_config) -> dict:
    return {"mode": train_config.preprocess_mode or "caffe", "image_mean": dict(train_config.image_mean)}


def manifest_for(arguments: dict, classes: list[str], shape, preprocess: dict, interp: str, spec_text: str) -> dict:
    return {"task": TASK, "arch": arguments, "class_map": {name: i for i, name in enumerate(classes)},
            "input_shape": list(shape), "preprocess": preprocess, "interpolation": interp, "spec": spec_text}


# --------------------------------------------------------------------------- class maps
def read_classmap(path) -> list[str]:
    """A TAO classmap.json ({class name: index}) as the list of names in index order."""
    try:
        mapping = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TaoctlError(f"classmap {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise TaoctlError(f"classmap {path}: not JSON ({exc})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise TaoctlError(f"classmap {path}: expected a JSON object {{class name: index}}")
    indices = sorted(mapping.values()) if all(isinstance(v, int) for v in mapping.values()) else None
    if indices != list(range(len(mapping))):
        raise TaoctlError(f"classmap {path}: indices must be the integers 0..{len(mapping) - 1}, each once")
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]


def write_json(path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- model files
def load_classifier(path, key: str | None = None) -> tuple[nn.Module, dict]:
    """A .tlt classification model (pruned or not) rebuilt from its manifest alone."""
    loaded = modelfile.load_model(path, key)
    manifest = loaded.manifest
    if manifest.get("task") != TASK:
        raise TaoctlError(f"{path} is a {manifest.get('task') or 'non-taoctl'} model, not a classification model")
    model = build_model(manifest["arch"], len(manifest["class_map"]))
    modelfile.load_weights_into(model, loaded)
    return model.eval(), manifest


def classes_of(manifest: dict) -> list[str]:
    return [name for name, _ in sorted(manifest["class_map"].items(), key=lambda kv: kv[1])]


class Predictor:
    """Class probabilities for uint8 NCHW batches, from a .tlt model or an ONNX file.

    ``logits`` are what the loss is computed from: PyTorch models give logits; ONNX models
    output probabilities (as TAO's exports do), whose log serves the same purpose.
    """

    def __init__(self, path, key: str | None, normalizer: Normalizer | None = None, shape=None,
                 classes: list[str] | None = None, interp: str = "BILINEAR", threads: int | None = None):
        self.path = str(path)
        self.is_onnx = self.path.lower().endswith(".onnx")
        if self.is_onnx:
            from taoctl.engine.export import ort_session

            if normalizer is None or shape is None:
                raise TaoctlError(f"{path}: an ONNX model needs the spec's model_config/train_config (-e) "
                                  f"for its input size and preprocessing")
            self.session = ort_session(path, threads)
            model_shape = self.session.get_inputs()[0].shape[1:]
            if all(isinstance(d, int) for d in model_shape) and tuple(model_shape) != tuple(shape):
                raise TaoctlError(f"{path}: model input is {tuple(model_shape)} but the spec's input_image_size is "
                                  f"{tuple(shape)}")
            self.normalizer, self.shape, self.classes, self.interp = normalizer, tuple(shape), classes, interp
            self.model = None
        else:
            self.model, manifest = load_classifier(path, key)
            self.shape = tuple(manifest["input_shape"])
            self.normalizer = normalizer_from_manifest(manifest)
            self.classes = classes_of(manifest)
            self.interp = manifest.get("interpolation", "BILINEAR")
            if threads:
                torch.set_num_threads(threads)
        if self.classes is None:
            raise TaoctlError(f"{path}: pass the class map (-cm classmap.json) to name the ONNX model's outputs")

    def log_probs(self, batch: np.ndarray) -> np.ndarray:
        """log-probabilities (N x classes) for a uint8 N x C x H x W batch."""
        if self.is_onnx:
            from taoctl.engine.export import run_onnx

            probs = run_onnx(self.session, self.normalizer.numpy(batch))
            return np.log(np.clip(probs, 1e-12, 1.0))
        with torch.no_grad():
            logits = self.model(self.normalizer(torch.from_numpy(np.ascontiguousarray(batch))))
            return torch.log_softmax(logits.float(), dim=1).numpy()


# --------------------------------------------------------------------------- calibration images
def image_paths(cal_image_dir: str | None, experiment) -> list[str]:
    """Real images for calibration and checks: --cal_image_dir, else (with a spec) its datasets."""
    candidates = [cal_image_dir] if cal_image_dir else []
    if experiment is not None:
        candidates += [experiment.train_config.val_dataset_path, experiment.eval_config.eval_dataset_path,
                       experiment.train_config.train_dataset_path]
    for folder in candidates:
        if folder and Path(folder).is_dir():
            files = sorted(str(p) for p in Path(folder).rglob("*")
                           if p.is_file() and p.suffix.lower() in imagefolder.IMAGE_EXTENSIONS)
            if files:
                return files
        elif folder and folder == cal_image_dir:
            raise TaoctlError(f"--cal_image_dir {folder}: not a folder")
    return []


def load_image_sample(paths: list[str], count: int, shape, interp, mode, strict) -> tuple[np.ndarray, list[str]]:
    """load_image_batch of a seeded random choice of ``count`` paths (all when fewer), in their order."""
    chosen = [paths[i] for i in sorted(np.random.default_rng(0).permutation(len(paths))[:count])]
    return load_image_batch(chosen, shape, interp, mode, strict)


def load_image_batch(paths, shape, interp, mode, strict) -> tuple[np.ndarray, list[str]]:
    arrays, skipped = [], []
    for path in paths:
        try:
            arrays.append(imagefolder.load_image(path, shape[1:], shape[0], mode, interp).transpose(2, 0, 1))
        except TaoctlError as exc:
            if strict:
                raise
            skipped.append(str(exc))
    return (np.stack(arrays) if arrays else np.zeros((0, *shape), np.uint8)), skipped


# --------------------------------------------------------------------------- optimisation
def reg_layers(model: nn.Module, reg_config) -> tuple[str, float, list[nn.Parameter]]:
    """(type, weight_decay, weights in scope) for TAO's reg_config (scope Conv2D/Dense)."""
    kind = (reg_config.type or "None").strip()
    if kind.upper() == "NONE" or not kind:
        return "None", 0.0, []
    if kind.upper() not in ("L1", "L2"):
        raise TaoctlError(f'train_config.reg_config.type: unknown regularizer "{kind}"; use L1, L2 or None')
    scopes = {s.strip().lower() for s in (reg_config.scope or "Conv2D,Dense").split(",") if s.strip()}
    unknown = scopes - {"conv2d", "dense"}
    if unknown:
        raise TaoctlError(f"train_config.reg_config.scope: unknown layer type(s) {sorted(unknown)}; use Conv2D, Dense")
    types = tuple(t for s, t in (("conv2d", nn.Conv2d), ("dense", nn.Linear)) if s in scopes)
    weights = [m.weight for m in model.modules() if isinstance(m, types) and m.weight.requires_grad]
    return kind.upper(), float(reg_config.weight_decay), weights


def make_optimizer(model: nn.Module, train_config, base_lr: float) -> tuple[torch.optim.Optimizer, list, float]:
    """The optimizer with TAO's regularizer: L2 as weight decay on the scoped weights, L1 returned for the loss.

    Keras' L2(wd) adds wd * sum(w^2) to the loss, whose gradient is 2 * wd * w: weight_decay = 2 * wd.
    Returns (optimizer, L1 weights, L1 factor).
    """
    kind, wd, scoped = reg_layers(model, train_config.reg_config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TaoctlError("model_config.freeze_blocks/freeze_bn froze every layer: nothing left to train")
    scoped_ids = {id(p) for p in scoped}
    if kind == "L2" and wd > 0:
        groups = [{"params": [p for p in trainable if id(p) in scoped_ids], "weight_decay": 2 * wd},
                  {"params": [p for p in trainable if id(p) not in scoped_ids], "weight_decay": 0.0}]
    else:
        groups = [{"params": trainable, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    which = train_config.optimizer.WhichOneof("optim")
    if which == "sgd" or which is None:
        cfg = train_config.optimizer.sgd
        optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov and cfg.momentum))
        decay = cfg.decay
    elif which == "adam":
        cfg = train_config.optimizer.adam
        optimizer = torch.optim.Adam(groups, lr=base_lr, betas=(cfg.beta_1 or 0.9, cfg.beta_2 or 0.999),
                                     eps=cfg.epsilon or 1e-7)
        decay = cfg.decay
    else:
        cfg = train_config.optimizer.rmsprop
        optimizer = torch.optim.RMSprop(groups, lr=base_lr, alpha=cfg.rho or 0.9, eps=cfg.epsilon or 1e-7)
        decay = cfg.decay
    optimizer.keras_decay = float(decay)
    return optimizer, (scoped if kind == "L1" else []), (wd if kind == "L1" else 0.0)


def lr_schedule(lr_config, world_size: int, total_steps: int) -> tuple[float, callable]:
    """TAO makenet's schedules (learning rate scaled by the GPU count) as (base_lr, f(step) -> lr).

    step: base * gamma ** (step / (total * step_size / 100)) (step_size in percent of training, as
    TAO's StepLRScheduler); soft_anneal: linear ramp from 3e-4 to base until soft_start, then
    divided by annealing_divider after each annealing point; cosine: linear ramp from
    min_lr to base until soft_start, then cosine decay to min_lr = base * min_lr_ratio.
    """
    which = lr_config.WhichOneof("lr_scheduler")
    total = max(int(total_steps), 1)
    if which == "step":
        cfg = lr_config.step
        base = cfg.learning_rate * world_size
        steps_per_gamma = max(total * cfg.step_size // 100, 1)
        gamma = cfg.gamma if cfg.gamma > 0 else 1.0
        return base, lambda step: base * gamma ** (step / steps_per_gamma)
    if which == "soft_anneal":
        cfg = lr_config.soft_anneal
        base = cfg.learning_rate * world_size
        points = list(cfg.annealing_points)
        if any(p < cfg.soft_start for p in points) or points != sorted(points):
            raise TaoctlError("train_config.lr_config.soft_anneal: annealing_points must be increasing and after "
                              "soft_start")
        divider = cfg.annealing_divider or 10.0
        start = 3e-4

        def soft_anneal(step):
            progress = min(step / total, 1.0)
            if progress < cfg.soft_start:
                t = progress / cfg.soft_start
                return t * base + (1 - t) * start
            return base / divider ** sum(progress > p for p in points)

        return base, soft_anneal
    if which == "cosine":
        cfg = lr_config.cosine
        base = cfg.learning_rate * world_size
        low = base * cfg.min_lr_ratio

        def cosine(step):
            progress = min(step / total, 1.0)
            if cfg.soft_start > 0 and progress < cfg.soft_start:
                return low + (base - low) * progress / cfg.soft_start
            t = (progress - cfg.soft_start) / max(1.0 - cfg.soft_start, 1e-8)
            return low + (base - low) * (1 + math.cos(math.pi * t)) / 2

        return base, cosine
    raise TaoctlError("train_config.lr_config: set one of step, soft_anneal or cosine")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule, base_lr: float):
    """A LambdaLR following ``schedule`` per iteration, with Keras' time-based ``decay`` on top."""
    decay = getattr(optimizer, "keras_decay", 0.0)
    if base_lr <= 0:
        raise TaoctlError("train_config.lr_config: learning_rate must be positive")

    def factor(step):
        return schedule(step) / base_lr / (1.0 + decay * step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cpu_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
