"""An INT8 export (symmetric int8 QDQ, TensorRT's form) runs in onnxruntime as the same arithmetic, fused.

ort_int8.for_onnxruntime rewrites it for an onnxruntime session: int8 activations as uint8 with the zero
point moved by 128, ReLU/ReLU6 between equal scales as integer clips. Without it onnxruntime left
convolutions and clips in float between QDQ pairs and the INT8 model ran no faster than fp32.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from taoctl.engine import export, ort_int8


class Block(nn.Module):
    """mobilenet_v2's pieces: conv + ReLU6, depthwise conv + ReLU, a residual add, then a sigmoid head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU())
        self.project = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.project(self.depthwise(y))
        return torch.sigmoid(self.head(y)) * 2.0  # post-processing after the last conv


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    x = torch.rand(2, 3, 24, 24)
    torch.onnx.export(Block().eval(), (x,), str(fp32), input_names=["x"], output_names=["y"], opset_version=13,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    rng = np.random.default_rng(0)
    export.quantize_int8(fp32, int8, [{"x": rng.random((4, 3, 24, 24), np.float32)} for _ in range(4)], method="minmax")
    return fp32, int8


def session(model: onnx.ModelProto, level) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def optimised_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_the_rewrite_computes_exactly_what_the_export_does(models):
    int8 = onnx.load(str(models[1]))
    rewritten = ort_int8.for_onnxruntime(int8)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = Counter(node.op_type for node in rewritten.graph.node)
    assert ops["Clip"] == 2 and ops["Relu"] == 0  # ReLU6 and ReLU became integer clips
    x = np.random.default_rng(1).normal(0.5, 1, (3, 3, 24, 24)).astype(np.float32)
    # Unoptimised, onnxruntime runs each node as ONNX defines it: the two graphs are the same function.
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(session(rewritten, plain).run(None, {"x": x})[0],
                                  session(int8, plain).run(None, {"x": x})[0])
    assert quantised_types(int8) == {onnx.TensorProto.INT8} and quantised_types(rewritten) == {onnx.TensorProto.UINT8}


def quantised_types(model: onnx.ModelProto) -> set[int]:
    """The types activations are quantised to (their QuantizeLinear's zero point's)."""
    types = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
    return {types[node.input[2]] for node in model.graph.node if node.op_type == "QuantizeLinear"}


def test_onnxruntime_fuses_every_convolution_of_the_rewritten_graph(models, tmp_path):
    ops = optimised_ops(ort_int8.for_onnxruntime(onnx.load(str(models[1]))), tmp_path)
    assert ops["QLinearConv"] == 4 and ops["Conv"] == 0, ops
    assert ops["Sigmoid"] == 1 and "QLinearSigmoid" not in ops  # the head's post-processing stayed float


def test_export_sessions_run_the_rewrite_and_leave_the_file_as_tensorrt_reads_it(models):
    before = models[1].read_bytes()
    x = np.random.default_rng(2).normal(0.5, 1, (2, 3, 24, 24)).astype(np.float32)
    got = export.run_onnx(models[1], {"x": x})["y"]
    want = session(ort_int8.for_onnxruntime(onnx.load(str(models[1]))),
                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert models[1].read_bytes() == before


def test_graphs_without_int8_activations_are_left_alone(models):
    assert ort_int8.for_onnxruntime(onnx.load(str(models[0]))) is None
    nodes = {node.name: node.op_type for node in onnx.load(str(models[0])).graph.node}
    assert [nodes[name] for name in export.post_processing_nodes(models[0])] == ["Sigmoid", "Constant", "Mul"]
