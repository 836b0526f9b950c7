"""TAO's Keras ``.hdf5`` weights (NGC's unencrypted pretrained_* models), read with h5py, named as taoctl names them.

TAO's TF1 networks are Keras models whose layer names follow fixed rules (NVIDIA's
``nvidia_tao_tf1/core/templates``), so every layer of a TAO file can be placed on the taoctl
module that plays its part:

* ResNet: ``conv1``/``bn_conv1``; block ``i`` (1-4), repeat ``j`` (letters a, b, ... aa) has
  ``block_<i><j>_conv_<k>``/``block_<i><j>_bn_<k>`` and the projection
  ``block_<i><j>_conv_shortcut``/``block_<i><j>_bn_shortcut``. TAO projects the first block of
  every stage, layer1's included; without ``all_projections`` taoctl, as torchvision, projects
  only where the shape changes, so a resnet10/18/34 file's ``block_1a_*_shortcut`` is then unused.
* MobileNet v2: ``conv1``/``bn_conv1``; the first inverted residual ``expanded_conv_depthwise``,
  ``expanded_conv_project`` (+ ``_bn``); block ``n`` >= 1 ``block_<n>_expand``,
  ``block_<n>_depthwise``, ``block_<n>_project`` (+ ``_bn``) and, with ``all_projections``,
  ``block_<n>_projected_inputs``; the last 1x1 conv ``conv_1``/``conv_1_bn``.
* MobileNet v1: ``conv1``/``conv1_bn``, then ``conv_dw_<n>``/``conv_pw_<n>`` (+ ``_bn``), n = 1-13.
* VGG: ``block_<g><r>_conv_1``/``block_<g><r>_bn_1`` for conv group g (1-5) and repeat r;
  the retained head ``fc1``, ``fc2``, ``output_fc``.
* DarkNet: ``conv1``/``conv1_bn``; darknet53's strided convs ``conv2``-``conv6`` and residual
  ``i`` of block ``b`` ``b<b>_conv<i>_1``/``_2``; darknet19's ``b<b>_conv<j>`` (each + ``_bn``).
* The classification head of TAO's classifier is ``predictions``; a model's own named heads
  (detectnet_v2's ``output_cov``/``output_bbox``) match a Keras layer of the same name.

A Keras weights file (``model.save_weights``) lists its layers in the root attribute
``layer_names``; a whole-model file (``model.save``, what NGC ships) holds the same under
``model_weights/``. Each layer group lists its tensors in ``weight_names``
(``block_1a_conv_1/kernel:0``). Layouts differ from PyTorch's: a conv kernel is (H, W, in,
out), a depthwise kernel (H, W, in, multiplier), a dense kernel (in, out); and a dense layer
after a ``Flatten`` of a channels_first map reads it in (H, W, C) order, as Keras's Flatten
moves channels last before flattening.

``keras_state_dict`` returns the file's tensors under taoctl's parameter names in taoctl's
layouts. Tensors it cannot place keep their Keras name (``layer/weight``), and a tensor whose
shape does not fit keeps its converted shape: ``pretrained.load_pretrained`` then reports both
(unexpected, shape mismatch) as it does for any other file, and forces nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taoctl.errors import TaoctlError

# Architectures whose TAO Keras layer names are mapped (taoctl's registered names).
SUPPORTED_ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101",
                   "mobilenet_v1", "mobilenet_v2", "vgg16", "vgg19", "darknet19", "darknet53")

_WEIGHTED_TYPES = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.Linear)

# Dense layers that read a flattened multi-position feature map (VGG's retained head).
FLATTEN_FED = frozenset({"fc1"})

_BATCHNORM_WEIGHTS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                      "moving_variance": "running_var"}


# --------------------------------------------------------------------------- reading the file
def is_keras_hdf5(path) -> bool:
    """True for an HDF5 file, Keras' weights format (``read_keras_weights`` says whether it holds Keras weights)."""
    import h5py

    return Path(path).is_file() and h5py.is_hdf5(str(path))


def _attribute_strings(group, name: str) -> list[str]:
    """A list-of-strings attribute; Keras splits one past HDF5's 64 KB limit into name0, name1, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values += list(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_weights(path) -> dict[str, dict[str, np.ndarray]]:
    """Every tensor of a Keras HDF5 weights or whole-model file: {layer: {weight: array}}.

    The layer is the scope the tensor's name gives (``block_1a_conv_1`` for
    ``block_1a_conv_1/kernel:0``), so the layers of a model nested in the saved one are
    listed under their own names.
    """
    import h5py

    try:
        handle = h5py.File(str(path), "r")
    except OSError as error:
        raise TaoctlError(f"cannot read {path} as HDF5: {error}") from None
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        layer_names = _attribute_strings(root, "layer_names")
        if not layer_names:
            raise TaoctlError(f"{path} is an HDF5 file but not Keras weights (no layer_names "
                              "attribute at its root or under model_weights/)")
        weights: dict[str, dict[str, np.ndarray]] = {}
        for layer in layer_names:
            group = root.get(layer)
            if group is None:
                raise TaoctlError(f"{path}: Keras layer {layer} is listed but not stored (a damaged file?)")
            for weight_name in _attribute_strings(group, "weight_names"):
                if weight_name not in group:
                    raise TaoctlError(f"{path}: Keras layer {layer} lists {weight_name} but does not "
                                      "hold it (a damaged file?)")
                *scope, leaf = weight_name.split("/")
                owner = scope[-1] if scope else layer
                weights.setdefault(owner, {})[leaf.split(":")[0]] = np.asarray(group[weight_name])
    return weights


# --------------------------------------------------------------------------- TAO's layer names
def subblock_letters(index: int) -> str:
    """TAO's repeat id: 0 -> a, 25 -> z, 26 -> aa (base-26 letters)."""
    letters = ""
    while index >= 0:
        letters = chr(ord("a") + index % 26) + letters
        index = index // 26 - 1
    return letters


def _weighted(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(relative name, layer) of the convs, batch norms and dense layers in ``module``, in order."""
    for name, layer in module.named_modules():
        if isinstance(layer, _WEIGHTED_TYPES):
            yield name, layer


def _conv_and_norm_names(module: nn.Module, conv_names: list[str], norm_names: list[str]):
    """Pair the convs of ``module`` with conv_names and its batch norms with norm_names, in order."""
    convs = [n for n, m in _weighted(module) if isinstance(m, nn.Conv2d)]
    norms = [n for n, m in _weighted(module) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    yield from zip(convs, conv_names)
    yield from zip(norms, norm_names)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _resnet_names(net: nn.Module) -> Iterator[tuple[str, str]]:
    yield "conv1", "conv1"
    yield "bn1", "bn_conv1"
    for stage in range(1, 5):
        if not hasattr(net, f"layer{stage}"):  # a detector's trunk cut before this stage
            continue
        for index, block in getattr(net, f"layer{stage}").named_children():
            prefix = f"block_{stage}{subblock_letters(int(index))}_"
            for k in (1, 2, 3):
                if hasattr(block, f"conv{k}"):
                    yield f"layer{stage}.{index}.conv{k}", f"{prefix}conv_{k}"
                    yield f"layer{stage}.{index}.bn{k}", f"{prefix}bn_{k}"
            if block.downsample is not None:
                for name, keras in _conv_and_norm_names(block.downsample, [f"{prefix}conv_shortcut"],
                                                        [f"{prefix}bn_shortcut"]):
                    yield f"layer{stage}.{index}.downsample.{name}", keras
    if hasattr(net, "fc"):
        yield "fc", "predictions"


def _mobilenet_v2_names(net: nn.Module) -> Iterator[tuple[str, str]]:
    from taoctl.engine.backbones.mobilenet import InvertedResidual

    for index, unit in net.features.named_children():
        if isinstance(unit, InvertedResidual):
            block_id = int(index) - 1
            has_expand = sum(isinstance(m, nn.Conv2d) for m in unit.conv.modules()) == 3
            roles = ["expand", "depthwise", "project"] if has_expand else ["depthwise", "project"]
            # TAO's first block has no expansion and is named as Keras' MobileNetV2 names it.
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            for name, keras in _conv_and_norm_names(unit.conv, [prefix + r for r in roles],
                                                    [prefix + r + "_bn" for r in roles]):
                yield f"features.{index}.conv.{name}", keras
            if isinstance(unit.shortcut, nn.Conv2d):
                yield f"features.{index}.shortcut", prefix + "projected_inputs"
        else:
            conv, norm = ("conv1", "bn_conv1") if index == "0" else ("conv_1", "conv_1_bn")
            for name, keras in _conv_and_norm_names(unit, [conv], [norm]):
                yield f"features.{index}.{name}", keras
    if hasattr(net, "classifier"):
        yield "classifier.1", "predictions"


def _mobilenet_v1_names(net: nn.Module) -> Iterator[tuple[str, str]]:
    for index, unit in net.features.named_children():
        n = int(index)
        if n == 0:
            convs, norms = ["conv1"], ["conv1_bn"]
        else:
            convs, norms = [f"conv_dw_{n}", f"conv_pw_{n}"], [f"conv_dw_{n}_bn", f"conv_pw_{n}_bn"]
        for name, keras in _conv_and_norm_names(unit, convs, norms):
            yield f"features.{index}.{name}", keras
    if hasattr(net, "classifier"):
        yield "classifier.1", "predictions"


def _vgg_names(net: nn.Module) -> Iterator[tuple[str, str]]:
    present = dict(net.named_modules())
    for group, names in enumerate(net.block_names):
        layers = [(n, present[n]) for n in names if n.startswith("features.") and n in present]
        convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
        norms = [n for n, m in layers if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for repeat, name in enumerate(convs):
            yield name, f"block_{group}{subblock_letters(repeat)}_conv_1"
        for repeat, name in enumerate(norms):
            yield name, f"block_{group}{subblock_letters(repeat)}_bn_1"
    if hasattr(net, "classifier"):
        linears = [f"classifier.{n}" for n, m in net.classifier.named_children() if isinstance(m, nn.Linear)]
        keras = ["fc1", "fc2", "output_fc"] if len(linears) == 3 else ["predictions"]
        yield from zip(linears, keras)


def _darknet_names(net: nn.Module) -> Iterator[tuple[str, str]]:
    from taoctl.engine.backbones.darknet import Residual

    yield from (("stem." + n, k) for n, k in _conv_and_norm_names(net.stem, ["conv1"], ["conv1_bn"]))
    for stage in range(1, 6):
        if not hasattr(net, f"stage{stage}"):  # a detector's trunk cut before this stage
            continue
        units = list(getattr(net, f"stage{stage}").named_children())
        if any(isinstance(unit, Residual) for _, unit in units):  # darknet53: strided conv, residuals
            for index, unit in units:
                if isinstance(unit, Residual):
                    keras = [f"b{stage}_conv{index}_1", f"b{stage}_conv{index}_2"]
                else:
                    keras = [f"conv{stage + 1}"]
                for name, layer in _conv_and_norm_names(unit, keras, [k + "_bn" for k in keras]):
                    yield f"stage{stage}.{index}.{name}", layer
        else:  # darknet19: a max-pool, then numbered convs
            convs = [f"b{stage}_conv{j}" for j in range(1, len(units))]
            for name, layer in _conv_and_norm_names(getattr(net, f"stage{stage}"), convs,
                                                    [k + "_bn" for k in convs]):
                yield f"stage{stage}.{name}", layer
    if hasattr(net, "classifier") and isinstance(net.classifier[1], nn.Linear):
        yield "classifier.1", "predictions"


def _names_for(arch: str):
    if arch.startswith("resnet"):
        return _resnet_names
    if arch.startswith("vgg"):
        return _vgg_names
    if arch.startswith("darknet"):
        return _darknet_names
    return {"mobilenet_v1": _mobilenet_v1_names, "mobilenet_v2": _mobilenet_v2_names}[arch]


def _trunk(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(dotted name, module) of the first TAO-named backbone in ``model`` (the model itself for a classifier)."""
    from taoctl.engine.backbones._base import TrunkNetwork

    for name, module in model.named_modules():
        if isinstance(module, TrunkNetwork) and getattr(module, "arch", "") in SUPPORTED_ARCHS:
            return name, module
    return None


def keras_layer_names(model: nn.Module) -> dict[str, str]:
    """TAO's Keras layer name -> taoctl module name, for each conv, batch norm and dense layer of ``model``.

    Empty when ``model`` holds none of ``SUPPORTED_ARCHS``. The model's ``head_names`` map
    to themselves (a detector's heads keep TAO's names).
    """
    mapping = {head: head for head in getattr(model, "head_names", ())}
    found = _trunk(model)
    if found is None:
        return {}
    prefix, trunk = found
    present = dict(model.named_modules())
    for module, keras in _names_for(trunk.arch)(trunk):
        full = _join(prefix, module)
        # Skip what a variant leaves out: no batch norm (an Identity), layers past a detector's cut.
        if isinstance(present.get(full), _WEIGHTED_TYPES):
            mapping[keras] = full
    return mapping


def to_module_names(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` with each TAO Keras layer name replaced by its taoctl module; other names unchanged."""
    modules = dict(model.named_modules())
    if all(name in modules for name in names):
        return list(names)
    mapping = keras_layer_names(model)
    return [name if name in modules else mapping.get(name, name) for name in names]


# --------------------------------------------------------------------------- tensor layouts
def _conv_tensor(weight: str, array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if weight == "kernel" and tensor.dim() == 4:  # (H, W, in, out) -> (out, in, H, W)
        return tensor.permute(3, 2, 0, 1).contiguous()
    if weight == "depthwise_kernel" and tensor.dim() == 4:
        # (H, W, in, multiplier) -> (in * multiplier, 1, H, W); Keras' output channel
        # c * multiplier + m is PyTorch's group c, filter m.
        height, width, channels, multiplier = tensor.shape
        return tensor.reshape(height, width, channels * multiplier, 1).permute(2, 3, 0, 1).contiguous()
    return tensor


def _dense_tensor(weight: str, array: np.ndarray, flattened_channels: int | None) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if weight != "kernel" or tensor.dim() != 2:
        return tensor
    inputs, outputs = tensor.shape
    if flattened_channels and inputs > flattened_channels and inputs % flattened_channels == 0:
        # Rows come in Keras' flatten order (H, W, C); PyTorch flattens (C, H, W).
        tensor = tensor.reshape(inputs // flattened_channels, flattened_channels, outputs)
        tensor = tensor.permute(1, 0, 2).reshape(inputs, outputs)
    return tensor.t().contiguous()


def _last_conv_channels(model: nn.Module) -> int | None:
    """Output channels of the trunk's last conv: the depth of the map a retained fc head flattens."""
    found = _trunk(model)
    convs = [m for m in found[1].modules() if isinstance(m, nn.Conv2d)] if found else []
    return convs[-1].out_channels if convs else None


def keras_state_dict(path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of TAO Keras file ``path`` under ``model``'s parameter names, in PyTorch layouts.

    Tensors of layers ``model`` has no place for keep their Keras names (``layer/weight``).
    """
    weights = read_keras_weights(path)
    mapping = keras_layer_names(model)
    if not any(name in mapping for name in weights):
        arch = getattr(model, "arch", type(model).__name__)
        raise TaoctlError(f"{path}: no layer of this Keras file has a TAO layer name of {arch} "
                          f"(it has {', '.join(list(weights)[:3])} ...); TAO .hdf5 weights load onto "
                          f"{', '.join(SUPPORTED_ARCHS)}")
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    unplaced: dict[str, torch.Tensor] = {}
    for layer, tensors in weights.items():
        module_name = mapping.get(layer)
        module = modules.get(module_name) if module_name else None
        for weight, array in tensors.items():
            target = None
            if isinstance(module, nn.Conv2d) and weight in ("kernel", "depthwise_kernel", "bias"):
                target, value = ("weight" if weight != "bias" else "bias"), _conv_tensor(weight, array)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and weight in _BATCHNORM_WEIGHTS:
                target, value = _BATCHNORM_WEIGHTS[weight], torch.from_numpy(np.asarray(array))
            elif isinstance(module, nn.Linear) and weight in ("kernel", "bias"):
                channels = _last_conv_channels(model) if layer in FLATTEN_FED else None
                target = "weight" if weight == "kernel" else "bias"
                value = _dense_tensor(weight, array, channels)
            if target is None:
                unplaced[f"{layer}/{weight}"] = torch.from_numpy(np.asarray(array))
            else:
                state[f"{module_name}.{target}"] = value
    return {**state, **unplaced}
