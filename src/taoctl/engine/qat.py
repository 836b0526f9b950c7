"""Quantisation-aware training (QAT) for every task, and its INT8 export without calibration data.

What TensorRT builds as explicit INT8 (and onnxruntime runs with int8 kernels): symmetric int8
fake quantisation on the inputs of every Conv/Linear (one scale per tensor) and on their weights
(one scale per output channel), zero points 0. :func:`prepare_qat` turns a float model into a QAT
model in place: each quantised layer keeps its class's behaviour and parameter names (its class is
swapped for a subclass that adds ``input_quantizer`` and ``weight_quantizer``), so optimizers,
pruning records and state dicts work unchanged. Activation ranges start from calibration batches
(their max |x|) or the first training batch, then follow an exponential moving average of each
batch's max |x| while training, as TAO's TF1 QAT (tf.contrib.quantize, decay 0.999) does; weight
ranges are each channel's max |w| at every step.

:func:`export_qdq` writes the trained model as QuantizeLinear/DequantizeLinear ONNX: BatchNorms
that follow a quantised conv are folded into it first (exact for per-channel symmetric weights:
scaling a channel scales its range by the same factor), weights are stored as int8 and conv/linear
biases as int32 (scale = input scale x weight scale), which is the form onnxruntime fuses into
QLinearConv/QGemm and TensorRT reads as explicit INT8.

Why not NVIDIA's nvidia-modelopt (0.47.0 installs beside torch 2.13 without changing it): its
``mtq.quantize`` and fake-quant training run on CPU, but ``import modelopt.torch.quantization``
needs huggingface_hub, which it does not declare, and torch.onnx's dynamo exporter cannot trace
its CPU fake-quant (``GuardOnDataDependentSymNode: Could not guard on data-dependent expression
Eq(u0, 1)`` at ``tensor_quant.py: if min_amax < 0``); only the deprecated TorchScript exporter
writes its QDQ. torch.ao's PT2E QAT (prepare_qat_pt2e, XNNPACKQuantizer) is gone from torch 2.13
(moved to torchao). torch's own fake-quant operators export to QDQ with both exporters, so they
are used here.

onnxruntime on CPU: the quantised convs run as QLinearConv, but on x86 without VNNI its default
session converts int8 activations to uint8 and the AVX2 u8 x s8 kernel saturates int16 sums
(``session.qdqisint8allowed=1`` keeps int8 x int8: exact, slower); a conv whose output feeds a
float Add stays a float conv. ``bench/bench_qat.py`` measures it.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from taoctl.engine.export import DEFAULT_OPSET, DYNAMO_MIN_OPSET, quiet_exporter
from taoctl.engine.cli import deferred_interrupts, temporary_directory
from taoctl.errors import TaoctlError

# Symmetric int8: scale = amax / 127 so +-amax maps to +-127; ONNX's int8 QuantizeLinear saturates at
# [-128, 127] and torch's fake-quant exports only that range.
QMIN, QMAX = -128, 127
LEVELS = 127.0
# tf.contrib.quantize's moving-average decay for activation ranges (what TAO's TF1 QAT trains with).
EMA_DECAY = 0.999
# Smallest range a quantiser uses: an all-zero tensor must not give a zero (invalid) ONNX scale.
MIN_AMAX = 1e-8
STATE_VERSION = 1


class ActivationQuantizer(nn.Module):
    """Per-tensor symmetric int8 fake quantisation with a calibrated, then moving-average range."""

    def __init__(self):
        super().__init__()
        self.register_buffer("amax", torch.zeros(()))  # 0: not yet seen any data
        self.calibrating = False
        self.enabled = True
        self.frozen: tuple[float, bool] | None = None  # (scale, decomposed) once exported

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.calibrating or self.training:
            observed = x.detach().abs().amax().to(self.amax)
            if self.calibrating:
                self.amax.copy_(torch.maximum(self.amax, observed))
                return x
            if self.amax.item() == 0.0:
                self.amax.copy_(observed)
            else:
                self.amax.mul_(EMA_DECAY).add_(observed, alpha=1.0 - EMA_DECAY)
        if self.frozen is not None:
            scale, decomposed = self.frozen
            if decomposed:
                quantized = _decomposed().quantize_per_tensor(x, scale, 0, QMIN, QMAX, torch.int8)
                return _decomposed().dequantize_per_tensor(quantized, scale, 0, QMIN, QMAX, torch.int8)
            return torch.fake_quantize_per_tensor_affine(x, scale, 0, QMIN, QMAX)
        scale = (self.amax.clamp_min(MIN_AMAX) / LEVELS).to(torch.float32)
        zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, QMIN, QMAX)

    def freeze(self, decomposed: bool) -> None:
        """Fix the scale as a constant, so an exported graph holds it rather than computing it.

        ``decomposed``: write torch's quantize/dequantize operators (what torch.export handles with a
        dynamic batch; its fake-quant operators have no shape function there) instead of the fake-quant
        one (what the TorchScript exporter translates).
        """
        self.frozen = (float(self.amax.clamp_min(MIN_AMAX)) / LEVELS, decomposed)


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric int8 fake quantisation; each channel's range is its max |w|."""

    def __init__(self):
        super().__init__()
        self.enabled = True
        # (scales, zero points, int8 weight or None) once exported
        self.frozen: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.frozen is not None:
            scale, zero_point, quantized = self.frozen
            if quantized is not None:
                return _decomposed().dequantize_per_channel(quantized, scale, zero_point.long(), 0, QMIN, QMAX,
                                                            torch.int8)
            return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, QMIN, QMAX)
        scale = channel_scales(weight.detach()).to(torch.float32)
        zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, QMIN, QMAX)

    def freeze(self, weight: torch.Tensor, decomposed: bool) -> None:
        """Fix the scales of ``weight`` (the final, BatchNorm-folded one) as constants for export
        (``decomposed``: as :meth:`ActivationQuantizer.freeze`)."""
        scale = channel_scales(weight.detach()).to(torch.float32)
        zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        quantized = None
        if decomposed:  # the int8 weight itself, so the graph holds it (the exporter's quantize_per_channel
            # translation leaves a float weight behind a Clip)
            shape = (-1,) + (1,) * (weight.dim() - 1)
            quantized = torch.clamp(torch.round(weight.detach() / scale.reshape(shape)), QMIN, QMAX).to(torch.int8)
        self.frozen = (scale, zero_point, quantized)


def _decomposed():
    """torch's quantize/dequantize operators (``torch.ops.quantized_decomposed``), registered on import."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the operators)

    return torch.ops.quantized_decomposed


def channel_scales(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().amax(dim=tuple(range(1, weight.dim()))).clamp_min(MIN_AMAX) / LEVELS


class _QuantLayer:
    """Mixed into a Conv/Linear subclass: fake-quantised input and weight, the float layer's parameters."""

    def _attach_quantizers(self) -> None:
        self.input_quantizer = ActivationQuantizer()
        self.weight_quantizer = WeightQuantizer()


class QuantConv1d(_QuantLayer, nn.Conv1d):
    def forward(self, x):
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv2d(_QuantLayer, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv3d(_QuantLayer, nn.Conv3d):
    def forward(self, x):
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantLinear(_QuantLayer, nn.Linear):
    def forward(self, x):
        return nn.functional.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


# Exact float classes only: a subclass (a task's own conv with another forward) is left float.
QUANT_CLASSES: dict[type, type] = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d,
                                   nn.Linear: QuantLinear}


def _quantize_layer(module: nn.Module) -> None:
    module.__class__ = QUANT_CLASSES[type(module)]
    module._attach_quantizers()
    module.to(module.weight.device)


def _skipped(name: str, skip: set[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def _check_skip(model: nn.Module, skip: set[str]) -> None:
    names = {name for name, _ in model.named_modules()}
    unknown = sorted(s for s in skip if s not in names)
    if unknown:
        raise TaoctlError(f"QAT: no module named {', '.join(unknown)} to keep in float")


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's fake-quantised layers by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, _QuantLayer)}


def is_qat(model: nn.Module) -> bool:
    return bool(quantized_layers(model))


def prepare_qat(model: nn.Module, calibration_batches: Iterable[torch.Tensor | tuple] | None, *,
                skip: Iterable[str] = ()) -> nn.Module:
    """Insert fake quantisation into ``model`` (in place; returned for chaining).

    Every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` not inside a module named in ``skip`` gets an int8
    input and weight quantiser. ``calibration_batches`` (model inputs: a tensor, or a tuple of
    positional inputs) set the activation ranges to their max |x|; without them the first training
    batch does. The model's training mode is kept.
    """
    if is_qat(model):
        raise TaoctlError("QAT: the model already has fake quantisation")
    skip = set(skip)
    _check_skip(model, skip)
    layers = [module for name, module in model.named_modules()
              if type(module) in QUANT_CLASSES and not _skipped(name, skip)]
    if not layers:
        raise TaoctlError("QAT: the model has no Conv or Linear layer to quantise")
    for module in layers:
        _quantize_layer(module)
    if calibration_batches is not None:
        calibrate(model, calibration_batches)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor | tuple]) -> None:
    """Set every activation range to the max |x| the quantiser sees over ``batches`` (model in eval mode)."""
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    was_training = model.training
    model.eval()
    for quantizer in quantizers:
        quantizer.amax.zero_()
        quantizer.calibrating = True
    seen = 0
    try:
        device = next(model.parameters()).device
        for batch in batches:
            inputs = batch if isinstance(batch, (tuple, list)) else (batch,)
            model(*(torch.as_tensor(i).to(device) for i in inputs))
            seen += 1
    finally:
        for quantizer in quantizers:
            quantizer.calibrating = False
        model.train(was_training)
    if not seen:
        raise TaoctlError("QAT: the calibration batches are empty")


def qat_state(model: nn.Module) -> dict:
    """JSON-able description of the model's quantisers, for :func:`restore_qat` (goes into the manifest)."""
    return {"version": STATE_VERSION, "scheme": "int8 symmetric: per-tensor activations, per-channel weights",
            "layers": sorted(quantized_layers(model))}


def restore_qat(model: nn.Module, state: Mapping) -> nn.Module:
    """Rebuild the quantisers :func:`qat_state` recorded on a freshly built float model (in place),
    before its state dict (weights and activation ranges) is loaded."""
    if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
        raise TaoctlError(f"QAT: unsupported quantisation record {state!r:.80}; expected version {STATE_VERSION}")
    modules = dict(model.named_modules())
    for name in state.get("layers", ()):
        module = modules.get(name)
        if module is None or type(module) not in QUANT_CLASSES:
            found = "missing" if module is None else type(module).__name__
            raise TaoctlError(f"QAT: the model file quantises layer {name}, which this model does not have as "
                              f"Conv/Linear ({found})")
        _quantize_layer(module)
    return model


# --------------------------------------------------------------------------- export
@contextlib.contextmanager
def float_mode(model: nn.Module):
    """Run the QAT model without fake quantisation (its float counterpart) inside the block."""
    quantizers = [m for m in model.modules() if isinstance(m, (ActivationQuantizer, WeightQuantizer))]
    for quantizer in quantizers:
        quantizer.enabled = False
    try:
        yield model
    finally:
        for quantizer in quantizers:
            quantizer.enabled = True


def _follower_batchnorms(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, str]:
    """{quantised conv name: BatchNorm name} for each BatchNorm whose input is exactly that conv's output."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is held so its id is not reused
    pairs: dict[str, str] = {}
    hooks = []

    def conv_output(name, out):
        outputs[id(out)] = (name, out)

    def batchnorm_input(name, args):
        conv = outputs.get(id(args[0]))
        if conv is not None and conv[1] is args[0]:
            pairs[conv[0]] = name

    for name, module in model.named_modules():
        if isinstance(module, (QuantConv1d, QuantConv2d, QuantConv3d)):
            hooks.append(module.register_forward_hook(lambda mod, args, out, name=name: conv_output(name, out)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            hooks.append(module.register_forward_pre_hook(lambda mod, args, name=name: batchnorm_input(name, args)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def fold_batchnorms(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Fold each BatchNorm that directly follows a quantised conv into the conv (eval model, in place).

    A conv whose output also feeds something besides its BatchNorm would change that other use, so
    the folded model's float outputs (fake quantisation off: its rounding would hide nothing and
    flag float noise) are compared with the unfolded ones and a difference is refused.
    """
    pairs = _follower_batchnorms(model, inputs)
    if not pairs:
        return 0
    with torch.no_grad(), float_mode(model):
        before = _flat_outputs(model(*inputs))
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs.items():
        conv, bn = modules[conv_name], modules[bn_name]
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        parent, _, child = bn_name.rpartition(".")
        setattr(modules[parent] if parent else model, child, nn.Identity())
    with torch.no_grad(), float_mode(model):
        after = _flat_outputs(model(*inputs))
    for old, new in zip(before, after):
        if not torch.allclose(old, new, rtol=1e-3, atol=1e-3 * float(old.abs().max().clamp_min(1.0))):
            raise TaoctlError("QAT export: folding BatchNorms into their convolutions changes the model's "
                              "outputs (a conv output feeds more than its BatchNorm)")
    return len(pairs)


def _flat_outputs(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        return [t for value in outputs.values() for t in _flat_outputs(value)]
    return [t for value in outputs for t in _flat_outputs(value)]


def _as_inputs(sample, input_names) -> tuple[torch.Tensor, ...]:
    if isinstance(sample, torch.Tensor):
        return (sample.detach().cpu(),)
    if isinstance(sample, np.ndarray):
        return (torch.from_numpy(np.ascontiguousarray(sample)),)
    missing = [name for name in input_names if name not in sample]
    if missing:
        raise TaoctlError(f"QAT export: sample input {', '.join(missing)} not given")
    return tuple(torch.from_numpy(np.ascontiguousarray(sample[name])) for name in input_names)


def deployable_copy(model: nn.Module, sample, decomposed: bool = True) -> nn.Module:
    """The deployable copy of a QAT model: eval mode on CPU, BatchNorms folded into quantised convs,
    scales fixed (``decomposed``: for torch's dynamo exporter, see :meth:`ActivationQuantizer.freeze`)."""
    if not is_qat(model):
        raise TaoctlError("QAT export: the model has no fake quantisation (train it with enable_qat)")
    deployed = copy.deepcopy(model).eval().cpu()
    uncalibrated = [name for name, layer in quantized_layers(deployed).items()
                    if float(layer.input_quantizer.amax) == 0.0]
    if uncalibrated:
        raise TaoctlError(f"QAT export: layer {uncalibrated[0]} has no activation range "
                          f"(the model was never trained or calibrated)")
    fold_batchnorms(deployed, sample)
    if decomposed:
        _decomposed()  # registered before the exporter builds its operator table, or it cannot translate them
    for layer in quantized_layers(deployed).values():
        layer.input_quantizer.freeze(decomposed)
        layer.weight_quantizer.freeze(layer.weight, decomposed)
    return deployed


def export_qdq(model: nn.Module, sample: Mapping[str, np.ndarray] | torch.Tensor | np.ndarray, onnx_path,
               input_names, output_names, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, *,
               opset: int = DEFAULT_OPSET) -> None:
    """INT8 QDQ ONNX of a QAT model from its learned ranges (no calibration data).

    ``sample``: example inputs (``{input name: array}``, or the one input); ``dynamic_axes``:
    ``{input or output name: {axis: axis name}}``. Opsets from 18 come from torch's dynamo exporter,
    older ones from its TorchScript exporter (as engine.export does). Weights are stored as int8 and
    biases of quantised layers as int32, so onnxruntime fuses QLinearConv / QGemm.
    """
    import onnx

    input_names, output_names = list(input_names), list(output_names)
    inputs = _as_inputs(sample, input_names)
    deployed = deployable_copy(model, inputs, decomposed=opset >= DYNAMO_MIN_OPSET)
    dynamic_axes = {name: dict(axes) for name, axes in (dynamic_axes or {}).items() if axes}
    traced = []
    for name, tensor in zip(input_names, inputs):
        for axis in dynamic_axes.get(name, {}):  # tracing specialises sizes 0 and 1
            if tensor.shape[axis] < 2:
                tensor = torch.cat([tensor, tensor], dim=axis)
        traced.append(tensor)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_directory(onnx_path.parent) as work:
        raw = Path(work) / "qdq_raw.onnx"
        try:
            with quiet_exporter(), deferred_interrupts(), torch.no_grad():
                if opset >= DYNAMO_MIN_OPSET:
                    dims: dict[str, torch.export.Dim] = {}
                    shapes = tuple({axis: dims.setdefault(label, torch.export.Dim(label, min=1, max=4096))
                                    for axis, label in dynamic_axes.get(name, {}).items()} or None
                                   for name in input_names)
                    program = torch.onnx.export(deployed, tuple(traced), dynamo=True, input_names=input_names,
                                                output_names=output_names, dynamic_shapes=shapes,
                                                opset_version=opset, external_data=False, verbose=False)
                    program.save(str(raw))
                else:
                    torch.onnx.export(deployed, tuple(traced), str(raw), dynamo=False, opset_version=opset,
                                      input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
        except Exception as exc:  # torch raises several types (unsupported operator, tracing errors, ...)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TaoctlError(f"QAT export: ONNX opset {opset} cannot be produced for this model ({reason})") from None
        graph = onnx.load(str(raw))
        _store_quantized_weights(graph)
        onnx.checker.check_model(graph, full_check=True)
        tmp = Path(work) / "qdq.onnx"
        onnx.save(graph, str(tmp))
        tmp.replace(onnx_path)


def _store_quantized_weights(model) -> None:
    """Rewrite the exported graph as TensorRT and onnxruntime read explicit INT8 (in place).

    Constant nodes become initializers (onnxruntime fuses QDQ only around initializer scales);
    QuantizeLinear(float weight) becomes an int8 weight; a quantised Conv/Gemm's float bias becomes an
    int32 one behind a DequantizeLinear whose scale is the input scale times the weight scale.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = [node for node in graph.node if node.op_type == "Constant" and node.attribute[0].name == "value"]
    for node in constants:
        tensor = node.attribute[0].t
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded: dict[str, np.ndarray] = {}  # QuantizeLinear output -> its int8 weight
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in values:
            weight, scale = values[node.input[0]].astype(np.float32), values[node.input[1]].astype(np.float32)
            shape = [1] * weight.ndim
            if scale.ndim:
                shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = -1
            folded[node.output[0]] = np.clip(np.rint(weight / scale.reshape(shape)), QMIN, QMAX).astype(np.int8)
    producers = {out: node for node in graph.node for out in node.output}
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and node in constants or node.output[0] in folded:
            continue
        if node.op_type in ("Conv", "Gemm") and len(node.input) == 3 and node.input[2] in values:
            x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
            if (x_dq is not None and w_dq is not None and x_dq.op_type == w_dq.op_type == "DequantizeLinear"
                    and (w_dq.input[0] in folded or values.get(w_dq.input[0], np.empty(0)).dtype == np.int8)):
                bias = values[node.input[2]].astype(np.float32)
                bias_scale = np.broadcast_to(
                    (values[x_dq.input[1]].astype(np.float32) * values[w_dq.input[1]].astype(np.float32)).reshape(-1),
                    bias.shape).astype(np.float32)
                name = f"{node.input[2]}_int32"
                graph.initializer.extend([
                    numpy_helper.from_array(np.rint(bias / bias_scale).astype(np.int32), name),
                    numpy_helper.from_array(bias_scale, f"{name}_scale"),
                    numpy_helper.from_array(np.zeros(bias.shape, np.int32), f"{name}_zero_point")])
                nodes.append(helper.make_node("DequantizeLinear", [name, f"{name}_scale", f"{name}_zero_point"],
                                              [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=0))
                node.input[2] = f"{name}_dequantized"
        nodes.append(node)
    graph.initializer.extend(numpy_helper.from_array(q, name) for name, q in folded.items())
    del graph.node[:]
    graph.node.extend(_quantize_before_activations(nodes, values))
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in values or i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)


def _quantize_before_activations(nodes: list, values: Mapping[str, np.ndarray]) -> list:
    """Conv/Gemm -> Relu|Clip -> QuantizeLinear(s) becomes Conv/Gemm -> Q(s) -> DQ(s) -> Relu|Clip -> Q(s).

    onnxruntime fuses int8 convolutions (QLinearConv, QGemm) only where a QuantizeLinear takes the
    conv's own output; TensorRT fuses either form. The result is exactly the same: with zero point 0,
    rounding to the grid commutes with clipping at 0 (and at an upper bound, by monotonicity), and the
    second QuantizeLinear sees values already on its grid. Only done where every consumer of the
    activation is a QuantizeLinear with the same scale and zero point, so no float path changes.
    """
    from onnx import helper

    producers = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def same(a: str, b: str) -> bool:
        return a in values and b in values and np.array_equal(values[a], values[b])

    rewritten = []
    for node in nodes:
        users = consumers.get(node.output[0], []) if node.op_type in ("Relu", "Clip") else []
        producer = producers.get(node.input[0]) if users else None
        if (producer is not None and producer.op_type in ("Conv", "Gemm") and len(consumers[node.input[0]]) == 1
                and all(u.op_type == "QuantizeLinear" and len(u.input) == 3 and same(u.input[1], users[0].input[1])
                        and same(u.input[2], users[0].input[2]) for u in users)
                and not values[users[0].input[2]].any()):
            scale, zero_point = users[0].input[1], users[0].input[2]
            quantized, dequantized = f"{node.input[0]}_quantized", f"{node.input[0]}_dequantized"
            rewritten.append(helper.make_node("QuantizeLinear", [node.input[0], scale, zero_point], [quantized],
                                              name=f"{node.name or node.output[0]}_input_QuantizeLinear"))
            rewritten.append(helper.make_node("DequantizeLinear", [quantized, scale, zero_point], [dequantized],
                                              name=f"{node.name or node.output[0]}_input_DequantizeLinear"))
            node.input[0] = dequantized
        rewritten.append(node)
    return rewritten


def quantized_scales(onnx_path) -> dict[str, float]:
    """{activation tensor name: its int8 scale} of a QDQ ONNX model (TensorRT calibration cache/json)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1 and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    scales = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts:
            scale = consts.get(node.input[1])
            if scale is None or scale.size != 1:
                raise TaoctlError(f"{onnx_path}: QuantizeLinear {node.name} has no constant per-tensor scale")
            scales[node.input[0]] = float(scale.reshape(()))
    return scales
