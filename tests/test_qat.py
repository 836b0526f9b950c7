"""Quantisation-aware training: fake-quant training, QDQ export that onnxruntime runs, model-file round trip."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from taoctl.engine import qat
from taoctl.errors import TaoctlError


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyDetector(nn.Module):
    """conv-bn-relu x3, a 1x1 head and a float sigmoid: the shape of a DetectNet_v2 coverage branch."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(3, 8), block(8, 16), block(16, 16))
        self.head = nn.Conv2d(16, 2, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.head(self.body(x)))


def images(count: int, batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 3, 16, 16, generator=generator) for _ in range(count)]


def targets(x: torch.Tensor) -> torch.Tensor:
    """A learnable map: channel 0 lights up where red beats green, channel 1 where blue is bright."""
    return torch.stack([(x[:, 0] > x[:, 1]).float(), (x[:, 2] > 0.5).float()], dim=1)


def train(model: nn.Module, steps: int, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for x in images(steps, seed=seed + 1):
        loss = nn.functional.binary_cross_entropy(model(x), targets(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = qat.prepare_qat(TinyDetector(), images(2, seed=7))
    train(model, 40)
    return model.eval()


def test_prepare_inserts_quantizers_and_keeps_parameter_names():
    model = TinyDetector()
    names = [name for name, _ in model.named_parameters()]
    qat.prepare_qat(model, images(2), skip=("head",))
    assert qat.is_qat(model) and not qat.is_qat(TinyDetector())
    assert sorted(qat.quantized_layers(model)) == ["body.0.0", "body.1.0", "body.2.0"]
    assert type(model.head) is nn.Conv2d  # skipped: stays float
    assert [name for name, _ in model.named_parameters()] == names
    # calibration: the first layer's range is the max |pixel| it saw
    assert float(model.body[0][0].input_quantizer.amax) == pytest.approx(max(float(x.max()) for x in images(2)))


def test_prepare_refuses_unknown_skip_and_double_preparation():
    with pytest.raises(TaoctlError, match="no module named output_cov"):
        qat.prepare_qat(TinyDetector(), None, skip=("output_cov",))
    model = qat.prepare_qat(TinyDetector(), None)
    with pytest.raises(TaoctlError, match="already"):
        qat.prepare_qat(model, None)


def test_fake_quant_model_trains():
    torch.manual_seed(0)
    model = qat.prepare_qat(TinyDetector(), None)  # ranges from the first training batch
    losses = train(model, 40)
    assert float(model.body[1][0].input_quantizer.amax) > 0
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_fake_quant_rounds_to_the_int8_grid(trained):
    layer = trained.body[1][0]
    x = torch.randn(1, 8, 4, 4) * float(layer.input_quantizer.amax)
    scale = float(layer.input_quantizer.amax) / 127
    quantized = layer.input_quantizer(x) / scale
    assert torch.allclose(quantized, quantized.round(), atol=1e-3)
    weight = layer.weight_quantizer(layer.weight.detach()) / qat.channel_scales(layer.weight).reshape(-1, 1, 1, 1)
    assert torch.allclose(weight, weight.round(), atol=1e-3) and float(weight.abs().max()) == pytest.approx(127)


def ort_outputs(path, x: np.ndarray, optimized: bool):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    # int8 x int8 kernels: onnxruntime's default on x86 without VNNI runs uint8 activations whose int16
    # sums saturate, which is a property of that CPU path, not of the exported graph.
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    if optimized:
        options.optimized_model_filepath = str(path) + ".optimized.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("opset", [13, 18])
def test_export_qdq_runs_int8_in_onnxruntime_and_matches_fake_quant(trained, tmp_path, opset):
    path = tmp_path / "qat.onnx"
    sample = images(1, batch=2, seed=3)[0].numpy()
    qat.export_qdq(trained, {"input": sample}, path, ["input"], ["output"],
                   {"input": {0: "batch"}, "output": {0: "batch"}}, opset=opset)
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    assert "BatchNormalization" not in ops  # folded
    types = {t.data_type for t in graph.initializer}
    assert onnx.TensorProto.INT8 in types and onnx.TensorProto.INT32 in types  # int8 weights, int32 head bias
    for batch in (1, 3):
        x = images(1, batch=batch, seed=10 + batch)[0]
        with torch.no_grad():
            want = trained(x).numpy()
        reference = ort_outputs(path, x.numpy(), optimized=False)
        fused = ort_outputs(path, x.numpy(), optimized=True)
        # The torch model is unfolded: float rounding may move a value across a rounding boundary, a
        # one-step change in one activation (measured: max 3.1e-3, mean 3.6e-5 on the sigmoid's 0..1).
        assert np.abs(reference - want).max() < 1e-2 and np.abs(reference - want).mean() < 2e-4
        # onnxruntime's fused int8 kernels compute the graph's own arithmetic (measured: identical)
        assert np.abs(fused - reference).max() < 1e-3
    optimized_ops = [node.op_type for node in onnx.load(str(path) + ".optimized.onnx").graph.node]
    assert optimized_ops.count("QLinearConv") == 3  # the three quantised conv-relu layers run int8 kernels


def test_quantized_scales_are_the_learned_ranges(trained, tmp_path):
    path = tmp_path / "qat.onnx"
    qat.export_qdq(trained, images(1, batch=1)[0], path, ["input"], ["output"], {"input": {0: "batch"}}, opset=18)
    scales = qat.quantized_scales(path)
    assert scales["input"] == pytest.approx(float(trained.body[0][0].input_quantizer.amax) / 127, rel=1e-6)
    learned = sorted(float(layer.input_quantizer.amax) / 127 for layer in qat.quantized_layers(trained).values())
    # every quantised tensor carries one of the learned scales (a conv's output shares its activation's)
    assert sorted(set(np.float32(list(scales.values())).tolist())) == pytest.approx(learned, rel=1e-6)


def test_state_dict_round_trip_gives_identical_outputs(trained):
    state = json.loads(json.dumps(qat.qat_state(trained)))  # what a manifest stores
    weights = {name: tensor.clone() for name, tensor in trained.state_dict().items()}
    rebuilt = qat.restore_qat(TinyDetector(), state)
    rebuilt.load_state_dict(weights, strict=True)
    rebuilt.eval()
    x = images(1, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        TinyDetector().load_state_dict(weights)  # a float model refuses the quantisers' ranges


def test_restore_refuses_records_that_do_not_fit():
    with pytest.raises(TaoctlError, match="unsupported quantisation record"):
        qat.restore_qat(TinyDetector(), {"version": 99, "layers": []})
    with pytest.raises(TaoctlError, match="layer body.9"):
        qat.restore_qat(TinyDetector(), {"version": qat.STATE_VERSION, "layers": ["body.9"]})


class SharedConvOutput(nn.Module):
    """A conv whose output feeds its BatchNorm and the sum: folding the BatchNorm would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_export_refuses_what_it_cannot_fold_or_never_calibrated(tmp_path):
    model = qat.prepare_qat(SharedConvOutput(), images(1))
    model.bn.running_var.fill_(4.0)
    with pytest.raises(TaoctlError, match="folding BatchNorms"):
        qat.export_qdq(model, images(1)[0], tmp_path / "m.onnx", ["input"], ["output"])
    with pytest.raises(TaoctlError, match="no activation range"):
        qat.export_qdq(qat.prepare_qat(TinyDetector(), None), images(1)[0], tmp_path / "m.onnx", ["input"],
                       ["output"])
    with pytest.raises(TaoctlError, match="no fake quantisation"):
        qat.export_qdq(TinyDetector(), images(1)[0], tmp_path / "m.onnx", ["input"], ["output"])
    assert not (tmp_path / "m.onnx").exists()
