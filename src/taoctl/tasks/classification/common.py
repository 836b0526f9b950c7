"""classification's spec -> model mapping, class maps and image sampling (used by ``task.py``).

A classification model file's manifest records everything inference needs without the spec:
``arch`` (create_model's arguments), ``class_map`` ({name: index}), ``input_shape`` [C, H, W],
``preprocess`` (mode, image_mean) and ``interpolation``. An exported ``.onnx`` carries no
manifest: ``TASK.onnx_manifest`` rebuilds one from the spec and the class map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from taoctl.engine.backbones import create_model, parse_input_image_size
from taoctl.engine.data import imagefolder
from taoctl.engine.data.imagefolder import Normalizer
from taoctl.engine.metrics import report_json
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic

TASK = "classification"
INTERPOLATION_NAMES = {0: "BILINEAR", 1: "BICUBIC"}


# --------------------------------------------------------------------------- spec -> model
def model_arguments(model_config) -> dict:
    """create_model's keyword arguments from ``model_config`` (what the manifest records); the
    spec's arch, n_layers and input_image_size were checked when it loaded (``spec.validate_experiment``)."""
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
    """The spec's preprocessing (its preprocess_mode was checked when it loaded; image_mean is checked here)."""
    try:
        return Normalizer(train_config.preprocess_mode or "caffe", channels, dict(train_config.image_mean) or None)
    except TaoctlError as exc:
        raise TaoctlError(f"train_config.image_mean: {exc}") from None


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
    write_atomic(path, report_json(data))


def classes_of(manifest: dict) -> list[str]:
    return [name for name, _ in sorted(manifest["class_map"].items(), key=lambda kv: kv[1])]


# --------------------------------------------------------------------------- images
def image_paths(folder: str, what: str) -> list[str]:
    """Every image under ``folder`` (recursively, sorted); ``what`` names the flag or field in errors."""
    if not Path(folder).is_dir():
        raise TaoctlError(f"{what} {folder}: not a folder")
    return sorted(str(p) for p in Path(folder).rglob("*")
                  if p.is_file() and p.suffix.lower() in imagefolder.IMAGE_EXTENSIONS)


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

