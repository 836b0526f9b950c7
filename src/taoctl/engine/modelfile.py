"""taoctl model files (`.tlt`, `.tao`): an open format that loads without unpickling.

Layout (documented in docs/model_format.md):

* plain file: a zip archive (stored, not compressed) holding
  - ``manifest.json``: ``format``, ``format_version``, ``taoctl_version``, ``task``, ``arch`` (the
    builder's arguments), ``class_map``, ``spec`` (the spec text), ``layers`` (every Conv/Linear/
    norm layer's shape, so a pruned model is rebuilt from the manifest alone) and whatever else
    the task records (``epoch``, metrics ...), and ``weights_bytes`` (the weights member's size);
  - ``weights.safetensors``: the state dict.
* encrypted file (``-k KEY``): ``MAGIC`` + 16-byte salt + 12-byte nonce + AES-256-GCM of the
  plain file's bytes, with the key derived from KEY by scrypt. GCM's tag makes a wrong key fail
  cleanly instead of yielding garbage.

Names and keys follow the TAO generation whose command form was typed (``tao5_form``): TAO 4's
``taoctl classification train`` writes ``weights/resnet_080.tlt``, encrypted with ``-k``; TAO 5's
``taoctl model classification_tf1 train`` writes ``weights/resnet_080.hdf5``, plain whatever
``-k`` says, as TAO 5's files are, so a notebook that trains with ``-k`` and evaluates, prunes
or exports without it works. Reading never depends on the suffix: a file is a taoctl model
file by its contents (plain zip or ``MAGIC``), and ``-k`` is only used when the file is encrypted.

Reading trusts nothing in the file: a damaged or crafted one (truncated, not JSON, not
safetensors, a member that would inflate far beyond its stored size or the manifest's
``weights_bytes``, layer shapes that disagree with the weights, integer weights) is one
``corrupt model file PATH: WHAT`` error, refused before anything large is inflated or allocated.

The same container (``write_archive``/``Archive``) also holds trainer state (optimizer,
scheduler, RNG) for resuming: nested Python objects are split into tensors (safetensors) and
JSON by ``split_tensors``/``join_tensors``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from taoctl import __version__
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic

FORMAT = "taoctl-model"
FORMAT_VERSION = 1
MAGIC = b"TAOCTL-ENC\x00\x01"
_SALT, _NONCE, _TAG = 16, 12, 16
MANIFEST, WEIGHTS = "manifest.json", "weights.safetensors"
# taoctl stores members uncompressed; a compressed member (a file re-zipped by another tool) may
# inflate to at most this many times its stored size. Weights barely compress and a manifest
# about 10x, while a zip bomb of zeros inflates about 1000x: refused before it is inflated.
MAX_INFLATION = 100
MAX_MANIFEST_BYTES = 64 * 2**20
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
# Set by the launcher to the TAO 5 command group a subtask was typed under (`taoctl model ...`),
# unset for TAO 4's form; launcher/entrypoint.py's CLI_GROUP_ENV (the launcher cannot import torch).
CLI_GROUP_ENV = "TAOCTL_CLI_GROUP"


def tao5_form() -> bool:
    """Whether this run was typed in TAO 5's form (``taoctl model|dataset|deploy <task> ...``)."""
    return bool(os.environ.get(CLI_GROUP_ENV))


def checkpoint_suffix() -> str:
    """The suffix of the model files a train run writes: TAO 5's ``.hdf5``, TAO 4's ``.tlt``."""
    return ".hdf5" if tao5_form() else ".tlt"


def writing_key(key: str | None) -> str | None:
    """The key a file is encrypted with: ``key`` in TAO 4's form, none in TAO 5's (plain .hdf5)."""
    return None if tao5_form() else (key or None)


def corrupt(path, what: str) -> TaoctlError:
    """The one error for a model or state file that is damaged or crafted: never obeyed, never a traceback."""
    return TaoctlError(f"corrupt model file {path}: {what}" if path else f"corrupt model file: {what}")


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
    if len(blob) < header + _SALT + _NONCE + _TAG:
        raise corrupt(path, f"truncated ({len(blob)} bytes, shorter than the encryption header)")
    salt = blob[header:header + _SALT]
    nonce = blob[header + _SALT:header + _SALT + _NONCE]
    ciphertext = blob[header + _SALT + _NONCE:]
    derived = _derive_key(key, salt)
    try:
        return AESGCM(derived).decrypt(nonce, ciphertext, MAGIC)
    except InvalidTag:
        if _plaintext_starts_as_zip(derived, nonce, ciphertext):
            raise corrupt(path, "truncated or damaged (the key is right but the contents fail their "
                                "integrity check)") from None
        raise TaoctlError(f"cannot decrypt {path}: wrong key") from None


def _plaintext_starts_as_zip(key: bytes, nonce: bytes, ciphertext: bytes) -> bool:
    """Whether ``key`` decrypts the first bytes to a zip header, though the whole fails GCM's check.

    GCM encrypts with AES-CTR starting at counter 2 (nonce || 00000002), so the first block
    decrypts on its own: the right key gives the archive's zip header (a truncated or altered
    file), a wrong one 4 random bytes (a 2**-32 chance of a false match).
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
    return decryptor.update(ciphertext[:len(_ZIP_LOCAL_HEADER)]) == _ZIP_LOCAL_HEADER


# --------------------------------------------------------------------------- archive
def write_archive(path, members: dict[str, bytes], key: str | None = None) -> None:
    """Write ``members`` as one archive, encrypted with ``writing_key(key)``."""
    key = writing_key(key)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    write_atomic(path, _encrypt(data, key) if key else data)


class Archive:
    """A model or state file opened (decrypted when it is encrypted); members are inflated one by
    one on ``read``, each only after its declared size passed the bounds."""

    def __init__(self, path, key: str | None = None):
        self.path = Path(path)
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            raise TaoctlError(f"model file not found: {self.path}") from None
        except IsADirectoryError:
            raise TaoctlError(f"model file {self.path} is a directory") from None
        if blob.startswith(MAGIC):
            blob = _decrypt(blob, key, self.path)
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(blob))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
            if blob.startswith(_ZIP_LOCAL_HEADER):
                raise corrupt(self.path, f"not a complete zip archive ({exc})") from None
            raise TaoctlError(f"{self.path} is not a taoctl model file "
                              "(neither a taoctl archive nor an encrypted one)") from None
        self.names = self._zip.namelist()

    def read(self, name: str, expected_size: int | None = None, limit: int | None = None) -> bytes:
        """Member ``name``'s bytes; refused before inflating when its declared size is not
        ``expected_size``, exceeds ``limit`` or is more than ``MAX_INFLATION`` x its stored size."""
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise corrupt(self.path, f"{name} is missing from the archive") from None
        if expected_size is not None and info.file_size != expected_size:
            raise corrupt(self.path, f"{name} holds {info.file_size} bytes but the manifest says {expected_size}")
        if limit is not None and info.file_size > limit:
            raise corrupt(self.path, f"{name} would inflate to {info.file_size} bytes (at most {limit})")
        if info.file_size > MAX_INFLATION * max(info.compress_size, 1):
            raise corrupt(self.path, f"{name} would inflate from {info.compress_size} to {info.file_size} bytes "
                                     f"(more than {MAX_INFLATION}x: a zip bomb)")
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise corrupt(self.path, f"{name} cannot be read ({exc})") from None


def _read_json(archive: Archive, name: str, limit: int = MAX_MANIFEST_BYTES) -> dict:
    try:
        value = json.loads(archive.read(name, limit=limit))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise corrupt(archive.path, f"{name} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise corrupt(archive.path, f"{name} is not a JSON object")
    return value


def _read_tensors(archive: Archive, name: str, expected_size: int | None = None) -> dict[str, torch.Tensor]:
    data = archive.read(name, expected_size)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise corrupt(archive.path, f"{name} is not safetensors data ({exc})") from None


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
    archive = Archive(path, key)
    structure = _read_json(archive, "state.json")
    tensors = _read_tensors(archive, "tensors.safetensors")
    try:
        return join_tensors(structure, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt(archive.path, f"state.json does not match its tensors ({type(exc).__name__}: {exc})") from None


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
        # By the layer's shaped base class: a QAT layer (engine.qat's Conv2d subclass) is recorded as its Conv2d.
        shaped = next((cls for cls in type(module).__mro__ if cls in _SHAPE_ARGS), None)
        if shaped is None:
            continue
        args = _SHAPE_ARGS[shaped]
        entry = {"type": shaped.__name__}
        for arg in args:
            value = getattr(module, arg)
            entry[arg] = list(value) if isinstance(value, tuple) else value
        if hasattr(module, "bias") and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            entry["bias"] = module.bias is not None
        shapes[name] = entry
    return shapes


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict], weights: dict[str, torch.Tensor] | None = None,
                       path=None) -> nn.Module:
    """Replace layers whose recorded shape differs (a pruned model) by layers of that shape.

    Each replacement is first built on the meta device (no memory), so a manifest that claims
    absurd widths or disagrees with ``weights`` (the file's tensors) is refused, naming ``path``,
    before anything is allocated.

    Modules that keep extra attributes derived from a width (e.g. a channel count used in
    ``forward``) must read it from their layers, which every taoctl backbone does.
    """
    if not isinstance(shapes, dict):
        raise corrupt(path, '"layers" in the manifest is not an object')
    modules = dict(model.named_modules())
    for name, entry in shapes.items():
        current = modules.get(name)
        if current is None:
            raise corrupt(path, f"the manifest describes layer {name!r} that the architecture does not have")
        if layer_shapes(current).get("") == entry:
            continue
        if not isinstance(entry, dict) or entry.get("type") not in _TYPES:
            raise corrupt(path, f"layer {name!r} in the manifest is not one of {', '.join(_TYPES)}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in entry.items() if k != "type"}
        layer_type = _TYPES[entry["type"]]
        try:
            with torch.device("meta"):
                shaped = layer_type(**kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise corrupt(path, f"layer {name!r} in the manifest cannot be built ({exc})") from None
        if weights is not None:
            for tensor_name, tensor in shaped.state_dict().items():
                stored = weights.get(f"{name}.{tensor_name}")
                if stored is not None and tuple(stored.shape) != tuple(tensor.shape):
                    raise corrupt(path, f"the manifest gives layer {name!r} a {tensor_name} of shape "
                                        f"{list(tensor.shape)} but the weights hold {list(stored.shape)}")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, layer_type(**kwargs))
    return model


# --------------------------------------------------------------------------- model files
@dataclass
class ModelFile:
    path: Path
    manifest: dict
    state_dict: dict[str, torch.Tensor]


def pack_assets(files: dict[str, bytes]) -> dict[str, str]:
    """Files a model needs beside its weights (an NLP task's tokenizer, vocabulary, label maps), as a
    manifest value: the manifest travels with every copy of the model (checkpoints, pruned files,
    exports), so ``-m`` alone is enough to evaluate, infer or export."""
    return {name: base64.b64encode(data).decode("ascii") for name, data in files.items()}


def unpack_assets(path, packed: dict) -> dict[str, bytes]:
    """The files :func:`pack_assets` stored in a manifest of the model file ``path``."""
    try:
        return {str(name): base64.b64decode(data, validate=True) for name, data in packed.items()}
    except (AttributeError, TypeError, ValueError, binascii.Error) as exc:
        raise corrupt(path, f"its assets are not base64 file contents ({exc})") from None


def save_model(path, model: nn.Module, manifest: dict, key: str | None = None) -> None:
    """Write ``model``'s weights and ``manifest`` (plus layer shapes, the weights' size and versions) atomically."""
    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    weights = save_safetensors(state)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "taoctl_version": __version__, **manifest,
            "layers": layer_shapes(module), "weights_bytes": len(weights)}
    write_archive(path, {MANIFEST: json.dumps(full, indent=1).encode(), WEIGHTS: weights}, key)


def load_model(path, key: str | None = None) -> ModelFile:
    archive = Archive(path, key)
    if MANIFEST not in archive.names:
        raise TaoctlError(f"{path} is not a taoctl model file (no {MANIFEST} inside)")
    manifest = _read_json(archive, MANIFEST)
    if manifest.get("format") != FORMAT:
        raise TaoctlError(f"{path} is not a taoctl model file (format {manifest.get('format')!r})")
    version, weights_bytes = manifest.get("format_version", 0), manifest.get("weights_bytes")
    if not isinstance(version, int):
        raise corrupt(path, f"format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise TaoctlError(f"{path} was written by a newer taoctl ({manifest.get('taoctl_version')}); upgrade taoctl")
    if weights_bytes is not None and (not isinstance(weights_bytes, int) or isinstance(weights_bytes, bool)):
        raise corrupt(path, f"weights_bytes {weights_bytes!r} is not an integer")
    return ModelFile(Path(path), manifest, _read_tensors(archive, WEIGHTS, weights_bytes))


def load_weights_into(model: nn.Module, model_file: ModelFile) -> nn.Module:
    """Give ``model`` the file's layer shapes and weights: every tensor must be there with its shape;
    floating-point tensors of another precision are cast to the model's with one notice, any
    other dtype (integers where the model holds floats) is refused."""
    path, weights = model_file.path, model_file.state_dict
    apply_layer_shapes(model, model_file.manifest.get("layers", {}), weights, path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise TaoctlError(f"{path} does not match the architecture: "
                          f"{len(missing)} missing tensors (e.g. {missing[:3]}), "
                          f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    cast, state = {}, {}
    for name, tensor in weights.items():
        target = expected[name]
        if tuple(tensor.shape) != tuple(target.shape):
            raise corrupt(path, f"tensor {name} has shape {list(tensor.shape)} but the manifest's layers make it "
                                f"{list(target.shape)}")
        if tensor.dtype != target.dtype:
            if not (tensor.is_floating_point() and target.is_floating_point()):
                raise corrupt(path, f"tensor {name} is {tensor.dtype} where the model holds {target.dtype}")
            cast.setdefault(f"{tensor.dtype} -> {target.dtype}", []).append(name)
            tensor = tensor.to(target.dtype)
        state[name] = tensor
    if cast and os.environ.get("RANK", "0") == "0":  # one notice per run, not one per DDP process
        what = "; ".join(f"{len(names)} tensors {change} (e.g. {names[0]})" for change, names in cast.items())
        print(f"Notice: {path}: weights stored in another precision were cast: {what}", flush=True)
    model.load_state_dict(state)
    return model
