"""TensorRT's INT8 graph in the form onnxruntime's x86 kernels run fast, with the same arithmetic.

An INT8 export is a QDQ graph of symmetric signed int8 (zero points 0): what TensorRT builds as explicit
INT8. onnxruntime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into one integer convolution only
for some int8-activation convolutions (24 of a mobilenet_v2 YOLOv3's 69 stayed float), and keeps every
ReLU6 (``Clip``) between quantised tensors in float, so the INT8 model ran no faster than fp32. Its
uint8-activation kernels fuse them all. :func:`for_onnxruntime` rewrites the graph, in memory, for an
onnxruntime session only (the file stays TensorRT's):

* every activation's int8 zero point z becomes the uint8 zero point z + 128: ``(q + 128) - (z + 128)``
  is ``q - z``, and the saturation bounds move with it, so each QuantizeLinear/DequantizeLinear pair
  computes exactly what it did;
* a ``DequantizeLinear -> Clip/Relu -> QuantizeLinear`` whose two ends share scale and zero point is a
  clamp of the quantised values, so it becomes an integer ``Clip`` (bounds rounded as QuantizeLinear
  rounds them).

Weights (DequantizeLinear of an int8 initializer) stay int8: onnxruntime's fast kernels take uint8
activations times int8 weights.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Operators that only clamp (see _clamp_bounds).
_CLAMPS = ("Clip", "Relu")


def for_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The rewritten copy of ``model``, or None when it has no int8 activations to rewrite (or has some
    this rewrite does not understand: an int8 tensor that is a graph output or feeds anything but
    DequantizeLinear)."""
    if not _activation_quantizers(model.graph):
        return None
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's model stays as it was
    graph = model.graph
    quantizers = _activation_quantizers(graph)
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {output.name for output in graph.output}
    if any(node.output[0] in graph_outputs or any(c.op_type != "DequantizeLinear" for c in consumers[node.output[0]])
           for node in quantizers):
        return None
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    shifted: dict[str, str] = {}

    def shift(node: onnx.NodeProto) -> None:
        zero_point = node.input[2]
        if zero_point not in shifted:
            values = numpy_helper.to_array(initializers[zero_point]).astype(np.int16) + 128
            shifted[zero_point] = f"{zero_point}_as_uint8"
            graph.initializer.append(numpy_helper.from_array(values.astype(np.uint8), shifted[zero_point]))
            initializers[shifted[zero_point]] = graph.initializer[-1]
        node.input[2] = shifted[zero_point]

    dequantizers = []
    for quantizer in quantizers:
        shift(quantizer)
        for dequantizer in consumers[quantizer.output[0]]:
            shift(dequantizer)
            dequantizers.append(dequantizer)
    _integer_clamps(graph, initializers, consumers, dequantizers)
    used = {name for node in graph.node for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name not in used]
    for tensor in unused:  # the replaced zero points, and the scales of the Q/DQ pairs the clamps absorbed
        graph.initializer.remove(tensor)
    return model


def _activation_quantizers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The QuantizeLinear nodes of activations (not of initializers) to int8."""
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    return [node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] not in initializers
            and len(node.input) > 2 and node.input[2] in initializers
            and initializers[node.input[2]].data_type == TensorProto.INT8]


def _integer_clamps(graph: onnx.GraphProto, initializers, consumers, dequantizers) -> None:
    """Replace DequantizeLinear -> Clip/Relu -> QuantizeLinear (same scale and zero point) by an integer Clip.

    ``initializers``: the graph's by name; only the scalars read here are converted to arrays, not the weights.
    """
    def values(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name])

    # Nodes by their first output's name (unique in a graph).
    replaced: dict[str, onnx.NodeProto] = {}
    dropped: set[str] = set()
    for dequantizer in dequantizers:
        clamps = consumers[dequantizer.output[0]]
        if len(clamps) != 1 or clamps[0].op_type not in _CLAMPS:
            continue
        clamp = clamps[0]
        after = consumers[clamp.output[0]]
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or len(after[0].input) < 3:
            continue
        quantizer = after[0]
        scale, zero_point = values(quantizer.input[1]), values(quantizer.input[2])
        if not (scale.size == 1 and np.array_equal(scale, values(dequantizer.input[1]))
                and np.array_equal(zero_point, values(dequantizer.input[2]))):
            continue
        bounds = _clamp_bounds(clamp, initializers)
        if bounds is None:
            continue
        # QuantizeLinear: saturate(round_half_to_even(x / scale) + zero_point), here of the clamp's bounds.
        low, high = (default if bound is None else
                     int(np.clip(np.rint(np.float32(bound) / np.float32(scale)) + int(zero_point), 0, 255))
                     for bound, default in zip(bounds, (0, 255)))
        names = (f"{clamp.output[0]}_qmin", f"{clamp.output[0]}_qmax")
        graph.initializer.extend(numpy_helper.from_array(np.array(value, np.uint8), name)
                                 for value, name in zip((low, high), names))
        replaced[clamp.output[0]] = onnx.helper.make_node("Clip", [dequantizer.input[0], *names], [quantizer.output[0]],
                                                    name=f"{clamp.name or clamp.output[0]}_integer")
        dropped.update((quantizer.output[0], dequantizer.output[0]))
    if replaced:
        kept = [replaced.get(node.output[0], node) for node in graph.node if node.output[0] not in dropped]
        del graph.node[:]
        graph.node.extend(kept)


def _clamp_bounds(node: onnx.NodeProto, initializers) -> tuple[float | None, float | None] | None:
    """A Relu's or Clip's (lower, upper) bounds, None for an unbounded side; None when they are not constants."""
    if node.op_type == "Relu":
        return 0.0, None
    attributes = {attribute.name: attribute.f for attribute in node.attribute}
    if "min" in attributes or "max" in attributes:  # Clip before opset 11
        return attributes.get("min"), attributes.get("max")
    bounds = []
    for index in (1, 2):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            bounds.append(None)
        elif name in initializers:
            bounds.append(float(numpy_helper.to_array(initializers[name])))
        else:
            return None
    return bounds[0], bounds[1]
