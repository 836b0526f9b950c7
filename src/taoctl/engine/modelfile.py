"""taoctl model files (`.tlt`, `.tao`): an open format that loads without unpickling.

Layout (documented in docs/model_format.md):

* plain file: a zip archive (stored, not compressed) holding
  - ``manifest.json``: ``format``, ``format_version``, ``taoctl_version``, ``task``, ``arch`` (the
    builder's arguments), ``class_map``, ``spec`` (the spec text), ``layers`` (every Conv/Linear/
    norm layer's shape, so a pruned model is rebuilt from the manifest alone) and whatever else
    the task records (``epoch``, metrics ...);
  - ``weights.safetensors``: the state dict.
* encrypted file (``-k KEY``): ``MAGIC`` + 16-byte salt + 12-byte nonce + AES-256-GCM of the
  plain file's bytes, with the key derived from KEY by scrypt. GCM's tag makes a wrong key fail
  cleanly instead of yielding garbage.

The same container (``write_archive``/``read_archive``) also holds trainer state (optimizer,
scheduler, RNG) for resuming: nested Python objects are split into tensors (safetensors) and
JSON by ``split_tensors``/``join_tensors``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from taoctl import __version__
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic

FORMAT = "taoctl-model"
FORMAT_VERSION = 1
MAGIC = b"TAOCTL-ENC\x00\x01"
_SALT, _NONCE = 16, 12
MANIFEST, WEIGHTS = "manifest.json", "weights.safetensors"


# --------------------------------------------------------------------------- encryption
def _derive_key(key: str, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(key.encode("utf-8"))


def _encrypt(data: bytes, key: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    return MAGIC + salt + nonce + AESGCM(_derive_key(key, salt)).encrypt(nonce, data, MAGIC)


def _decrypt(blob: bytes, key: str | None, path: Path) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not key:
        raise TaoctlError(f"cannot decrypt {path}: wrong key (the file is encrypted; pass its key with -k)")
    header = len(MAGIC)
    salt = blob[header:header + _SALT]
    nonce = blob[header + _SALT:header + _SALT + _NONCE]
    try:
        return AESGCM(_derive_key(key, salt)).decrypt(nonce, blob[header + _SALT + _NONCE:], MAGIC)
    except InvalidTag:
        raise TaoctlError(f"cannot decrypt {path}: wrong key") from None


# --------------------------------------------------------------------------- archive
def write_archive(path, members: dict[str, bytes], key: str | None = None) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    write_atomic(path, _encrypt(data, key) if key else data)


def read_archive(path, key: str | None = None) -> dict[str, bytes]:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise TaoctlError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise TaoctlError(f"model file {path} is a directory") from None
    if blob.startswith(MAGIC):
        blob = _decrypt(blob, key, path)
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        raise TaoctlError(f"{path} is not a taoctl model file (neither a taoctl archive nor an encrypted one)") from None


# --------------------------------------------------------------------------- nested tensors <-> json
def split_tensors(obj, tensors: dict[str, torch.Tensor] | None = None, prefix: str = "t"):
    """Replace every tensor inside nested dicts/lists/tuples by a reference, collecting the tensors."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}, tensors
    if isinstance(obj, dict):
        return {"__dict__": [[split_tensors(k, tensors)[0], split_tensors(v, tensors)[0]] for k, v in obj.items()]}, tensors
    if isinstance(obj, (list, tuple)):
        items = [split_tensors(v, tensors)[0] for v in obj]
        return ({"__tuple__": items} if isinstance(obj, tuple) else items), tensors
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars
        return {"__array__": obj.tolist(), "dtype": str(getattr(obj, "dtype", ""))}, tensors
    return obj, tensors


def join_tensors(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {join_tensors(k, tensors): join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__array__" in obj:
            import numpy as np

            return np.asarray(obj["__array__"], dtype=obj["dtype"] or None)
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save_state(path, state: dict, key: str | None = None) -> None:
    """Save nested trainer state (optimizer, scheduler, RNG ...) without pickle."""
    structure, tensors = split_tensors(state)
    write_archive(path, {"state.json": json.dumps(structure).encode(), "tensors.safetensors": save_safetensors(tensors)},
                  key)


def load_state(path, key: str | None = None) -> dict:
    members = read_archive(path, key)
    return join_tensors(json.loads(members["state.json"]), load_safetensors(members["tensors.safetensors"]))


# --------------------------------------------------------------------------- layer shapes
_SHAPE_ARGS = {
    nn.Conv1d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    nn.ConvTranspose2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups",
                         "dilation", "padding_mode"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"),
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine"),
    nn.Embedding: ("num_embeddings", "embedding_dim"),
}
_TYPES = {cls.__name__: cls for cls in _SHAPE_ARGS}


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """Every shaped layer's constructor arguments, by qualified name."""
    shapes = {}
    for name, module in model.named_modules():
        args = _SHAPE_ARGS.get(type(module))
        if args is None:
            continue
        entry = {"type": type(module).__name__}
        for arg in args:
            value = getattr(module, arg)
            entry[arg] = list(value) if isinstance(value, tuple) else value
        if hasattr(module, "bias") and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            entry["bias"] = module.bias is not None
        shapes[name] = entry
    return shapes


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict]) -> nn.Module:
    """Replace layers whose recorded shape differs (a pruned model) by layers of that shape.

    Modules that keep extra attributes derived from a width (e.g. a channel count used in
    ``forward``) must read it from their layers, which every taoctl backbone does.
    """
    modules = dict(model.named_modules())
    for name, entry in shapes.items():
        current = modules.get(name)
        if current is None:
            raise TaoctlError(f"model file describes layer {name!r} that the architecture does not have")
        if layer_shapes(current).get("") == entry:
            continue
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in entry.items() if k != "type"}
        replacement = _TYPES[entry["type"]](**kwargs)
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, replacement)
    return model


# --------------------------------------------------------------------------- model files
@dataclass
class ModelFile:
    path: Path
    manifest: dict
    state_dict: dict[str, torch.Tensor]


def save_model(path, model: nn.Module, manifest: dict, key: str | None = None) -> None:
    """Write ``model``'s weights and ``manifest`` (plus layer shapes and versions) atomically."""
    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "taoctl_version": __version__, **manifest,
            "layers": layer_shapes(module)}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    write_archive(path, {MANIFEST: json.dumps(full, indent=1).encode(), WEIGHTS: save_safetensors(state)}, key)


def load_model(path, key: str | None = None) -> ModelFile:
    members = read_archive(path, key)
    if MANIFEST not in members or WEIGHTS not in members:
        raise TaoctlError(f"{path} is not a taoctl model file (no {MANIFEST}/{WEIGHTS} inside)")
    manifest = json.loads(members[MANIFEST])
    if manifest.get("format") != FORMAT:
        raise TaoctlError(f"{path} is not a taoctl model file (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise TaoctlError(f"{path} was written by a newer taoctl ({manifest.get('taoctl_version')}); upgrade taoctl")
    return ModelFile(Path(path), manifest, load_safetensors(members[WEIGHTS]))


def load_weights_into(model: nn.Module, model_file: ModelFile) -> nn.Module:
    """Give ``model`` the file's layer shapes and weights (strict: every tensor must match)."""
    apply_layer_shapes(model, model_file.manifest.get("layers", {}))
    missing, unexpected = model.load_state_dict(model_file.state_dict, strict=False)
    if missing or unexpected:
        raise TaoctlError(f"{model_file.path} does not match the architecture: "
                          f"{len(missing)} missing tensors (e.g. {missing[:3]}), "
                          f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    return model
