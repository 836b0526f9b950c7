"""The engine's one exporter on real models: several outputs, several inputs, opsets, INT8, DeepStream."""

from __future__ import annotations

import configparser

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from taoctl.engine import export
from taoctl.errors import TaoctlError

COV, BBOX = "output_cov/Sigmoid", "output_bbox/BiasAdd"  # detectnet_v2's output names


class TwoHeads(nn.Module):
    """A tiny detector-shaped net: a sigmoid coverage head and a linear box head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.pool = nn.AvgPool2d(7)
        self.cov = nn.Linear(8, 2)
        self.bbox = nn.Linear(8, 4)

    def forward(self, x):
        features = torch.flatten(self.pool(torch.relu(self.conv(x))), 1)
        return torch.sigmoid(self.cov(features)), self.bbox(features)


class PerturbedAtExport(nn.Module):
    """TwoHeads whose second output is off by 0.5 only in the exported graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        cov, bbox = self.model(x)
        exporting = torch.compiler.is_exporting() or torch.jit.is_tracing()  # dynamo or TorchScript exporter
        return cov, bbox + 0.5 if exporting else bbox


class Tokens(nn.Module):
    """Token ids and an attention mask (int64, N x L) -> per-sentence logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled)


def detector_adapter(module, **kwargs) -> export.ExportAdapter:
    return export.ExportAdapter(module=module, input_names=("input_1",), output_names=(COV, BBOX),
                                dynamic_axes={"input_1": {0: export.BATCH}}, **kwargs)


def read_config(path) -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.optionxform = str  # nvinfer's keys are case-sensitive (minBoxes)
    config.read(path)
    return config


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 16, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return TwoHeads().eval()


def test_two_outputs_are_exported_named_and_checked(detector, tmp_path, capsys):
    result = export.export_model(detector_adapter(detector), tmp_path / "m.onnx", {"input_1": images(6)},
                                 sample_desc="6 test images")
    assert result.onnx == tmp_path / "m.onnx" and result.cal_cache is None
    graph = onnx.load(str(result.onnx)).graph
    assert [o.name for o in graph.output] == [COV, BBOX]
    out = capsys.readouterr().out
    assert f"ONNX fp32 vs PyTorch on 6 test images: {COV} max abs diff" in out and f"{BBOX} max abs diff" in out
    x = images(5, seed=1)  # another batch size: the batch axis is dynamic
    got = export.run_onnx(result.onnx, x)
    want = export.torch_outputs(detector_adapter(detector), {"input_1": x})
    assert list(got) == [COV, BBOX]
    assert got[COV].shape == (5, 2) and got[BBOX].shape == (5, 4)
    for name in (COV, BBOX):
        assert np.abs(got[name] - want[name]).max() < 1e-5


def test_parity_fails_on_the_second_output_alone(detector, tmp_path):
    with pytest.raises(TaoctlError, match=f"output {BBOX} differs from PyTorch: max abs diff 0.5"):
        export.export_model(detector_adapter(PerturbedAtExport(detector)), tmp_path / "bad.onnx",
                            {"input_1": images(4)})
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary file
    # The same perturbation passes under a tolerance that allows it: the check is per output.
    export.export_model(detector_adapter(PerturbedAtExport(detector), tolerances={BBOX: 0.6}), tmp_path / "ok.onnx",
                        {"input_1": images(4)})
    assert (tmp_path / "ok.onnx").exists()


def test_comparison_function_decides_for_its_output(detector, tmp_path):
    def same_argmax(got, want):
        return None if (got.argmax(1) == want.argmax(1)).all() else "another box wins"

    def never(got, want):
        return "rejected"

    export.export_model(detector_adapter(PerturbedAtExport(detector), comparisons={BBOX: same_argmax}),
                        tmp_path / "ok.onnx", {"input_1": images(4)})
    with pytest.raises(TaoctlError, match=f"output {COV} differs from PyTorch: rejected"):
        export.export_model(detector_adapter(detector, comparisons={COV: never}), tmp_path / "no.onnx",
                            {"input_1": images(4)})


def test_fp16_and_int8_of_two_outputs(detector, tmp_path, capsys):
    sample = {"input_1": images(8)}
    fp32 = export.export_model(detector_adapter(detector), tmp_path / "m.onnx", sample).onnx
    half = export.export_model(detector_adapter(detector), tmp_path / "h.onnx", sample, data_type="fp16").onnx
    assert "ONNX fp16 vs fp32: " in capsys.readouterr().out
    reference, halved = export.run_onnx(fp32, sample), export.run_onnx(half, sample)
    assert all(np.abs(halved[n] - reference[n]).max() < 1e-2 for n in (COV, BBOX))

    calibration = [{"input_1": images(4, seed)} for seed in (2, 3)]
    result = export.export_model(detector_adapter(detector), tmp_path / "q.onnx", sample, data_type="int8",
                                 calibration=calibration)
    out = capsys.readouterr().out
    assert "Calibrating on 8 images (percentile)" in out
    assert f"ONNX int8 vs fp32 on sample inputs: {COV} max abs diff" in out
    assert result.cal_cache == tmp_path / "q.cal.bin"
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(result.onnx)).graph.node}
    quantised = export.run_onnx(result.onnx, sample)
    assert quantised[COV].shape == (8, 2) and quantised[BBOX].shape == (8, 4)
    assert np.abs(quantised[COV] - reference[COV]).max() < 0.1  # INT8 stays close to fp32
    # TensorRT's explicit INT8 form: signed int8 with zero points 0, symmetric weights.
    graph = onnx.load(str(result.onnx)).graph
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    zero_points = [initializers[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    int8_weights = [w for w in initializers.values() if w.dtype == np.int8 and w.ndim > 1]
    assert int8_weights and all(w.min() >= -127 and np.abs(w.astype(int)).max() > 64 for w in int8_weights)

    ranges = export.quantize_int8(fp32, tmp_path / "again.onnx", calibration, cache_path=tmp_path / "cal.bin")
    scales = export.read_trt_cache(tmp_path / "cal.bin")
    assert set(scales) == set(ranges) and {COV, BBOX} <= set(scales)
    name, (low, high) = sorted(ranges.items())[0]
    assert scales[name] == pytest.approx(max(abs(low), abs(high)) / 127, rel=1e-6)
    with pytest.raises(TaoctlError, match="needs at least one batch of images"):
        export.export_model(detector_adapter(detector), tmp_path / "none.onnx", sample, data_type="int8")


def test_entropy_calibration_clips_outliers_and_the_qdq_graph_uses_the_ranges_returned(detector, tmp_path):
    fp32 = export.export_model(detector_adapter(detector), tmp_path / "m.onnx", {"input_1": images(2)}).onnx
    rng = np.random.default_rng(0)
    heavy_tailed = [{"input_1": (rng.standard_normal((4, 3, 16, 16)) ** 3).astype(np.float32)} for _ in range(4)]
    found = {method: export.quantize_int8(fp32, tmp_path / f"{method}.onnx", heavy_tailed, method=method)
             for method in ("minmax", "entropy")}
    low, high = found["minmax"]["input_1"]
    assert (low, high) == (pytest.approx(min(b["input_1"].min() for b in heavy_tailed)),
                           pytest.approx(max(b["input_1"].max() for b in heavy_tailed)))
    clipped = max(abs(v) for v in found["entropy"]["input_1"])
    assert clipped < 0.5 * max(abs(low), abs(high))  # the cubed normal's rare extremes are cut off
    for method, ranges in found.items():  # one calibration: the graph's scales are the ranges returned
        graph = onnx.load(str(tmp_path / f"{method}.onnx")).graph
        initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        scale = next(initializers[n.input[1]] for n in graph.node
                     if n.op_type == "QuantizeLinear" and n.input[0] == "input_1")
        assert float(scale) == pytest.approx(max(abs(v) for v in ranges["input_1"]) / 127, rel=1e-5)


def test_two_token_inputs_with_dynamic_batch_and_sequence(tmp_path):
    torch.manual_seed(0)
    sequence = export.Axis("sequence", min=1, max=64)
    adapter = export.ExportAdapter(
        module=Tokens().eval(), input_names=("input_ids", "attention_mask"), output_names=("logits",),
        dynamic_axes={name: {0: export.BATCH, 1: sequence} for name in ("input_ids", "attention_mask")},
        items="sentences")

    def tokens(batch, length, seed):
        rng = np.random.default_rng(seed)
        mask = (np.arange(length) < rng.integers(1, length + 1, (batch, 1))).astype(np.int64)
        return {"input_ids": rng.integers(0, 50, (batch, length)), "attention_mask": mask}

    path = export.export_model(adapter, tmp_path / "nlp.onnx", tokens(2, 6, 0)).onnx
    declared = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in onnx.load(str(path)).graph.input}
    assert declared == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    for batch, length in ((3, 5), (1, 17)):
        inputs = tokens(batch, length, length)
        got = export.run_onnx(path, inputs)["logits"]
        assert got.shape == (batch, 3)
        assert np.abs(got - export.torch_outputs(adapter, inputs)["logits"]).max() < 1e-5
    with pytest.raises(TaoctlError, match="takes 2 inputs"):
        export.run_onnx(path, tokens(1, 4, 0)["input_ids"])
    profile = export.tensorrt_profile(adapter, tokens(2, 6, 0), max_batch_size=8)
    assert profile == {name: ((1, 1), (4, 6), (8, 64)) for name in ("input_ids", "attention_mask")}

    calibration = [tokens(4, 6, seed) for seed in (1, 2)]
    quantised = export.export_model(adapter, tmp_path / "q.onnx", tokens(2, 6, 0), data_type="int8",
                                    calibration=calibration).onnx
    assert export.run_onnx(quantised, tokens(2, 9, 3))["logits"].shape == (2, 3)


def test_requested_opset_or_one_error_line(detector, tmp_path, capfd):
    path = export.export_model(detector_adapter(detector), tmp_path / "o20.onnx", {"input_1": images(4)}, opset=20).onnx
    model = onnx.load(str(path))
    assert [e.version for e in model.opset_import if e.domain in ("", "ai.onnx")] == [20]
    assert [o.name for o in model.graph.output] == [COV, BBOX]
    capfd.readouterr()
    # Opset 13 (below the dynamo exporter's 18) comes from the TorchScript exporter, with the same outputs.
    old = export.export_model(detector_adapter(detector), tmp_path / "o13.onnx", {"input_1": images(4)}, opset=13).onnx
    assert [e.version for e in onnx.load(str(old)).opset_import if e.domain in ("", "ai.onnx")] == [13]
    x = images(3, seed=5)
    assert all(np.abs(export.run_onnx(old, x)[n] - export.run_onnx(path, x)[n]).max() < 1e-5 for n in (COV, BBOX))
    with pytest.raises(TaoctlError) as caught:
        export.export_model(detector_adapter(detector), tmp_path / "o6.onnx", {"input_1": images(4)}, opset=6)
    message = str(caught.value)
    assert "ONNX opset 6 is not supported" in message and "\n" not in message
    assert "Traceback" not in "".join(capfd.readouterr())
    assert not (tmp_path / "o6.onnx").exists()


def test_deepstream_config_of_a_detector(detector, tmp_path, capsys):
    fields = export.DeepStreamFields(
        export.NetworkType.DETECTOR, labels=("car", "person"),
        normalizer={"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0], "bgr": False},
        cluster_mode=export.ClusterMode.NMS,
        class_attributes={"all": export.ClassAttributes(pre_cluster_threshold=0.3, nms_iou_threshold=0.5, topk=20),
                          1: export.ClassAttributes(pre_cluster_threshold=0.6, eps=0.2, min_boxes=2)})
    result = export.export_model(detector_adapter(detector, deepstream=fields), tmp_path / "det.onnx",
                                 {"input_1": images(2)}, max_batch_size=4, gen_ds_config=True)
    config = read_config(result.deepstream_config)
    prop = config["property"]
    assert prop["network-type"] == "0" and prop["output-blob-names"] == f"{COV};{BBOX}"
    assert prop["cluster-mode"] == "2" and prop["num-detected-classes"] == "2"
    assert prop["onnx-file"] == "det.onnx" and prop["labelfile-path"] == "labels.txt"
    assert prop["infer-dims"] == "3;16;16" and prop["batch-size"] == "4" and prop["network-mode"] == "0"
    assert float(prop["net-scale-factor"]) == pytest.approx(1 / 255) and prop["model-color-format"] == "0"
    assert "classifier-threshold" not in prop and "int8-calib-file" not in prop
    assert dict(config["class-attrs-all"]) == {"pre-cluster-threshold": "0.3", "nms-iou-threshold": "0.5",
                                               "topk": "20"}
    assert dict(config["class-attrs-1"]) == {"pre-cluster-threshold": "0.6", "eps": "0.2", "minBoxes": "2"}
    assert (tmp_path / "labels.txt").read_text() == "car\nperson\n"


def test_deepstream_config_of_a_classifier(tmp_path):
    from taoctl.engine.task import Run
    from taoctl.tasks.classification.task import TASK

    manifest = {"class_map": {"cat": 0, "dog": 1, "fox": 2}, "input_shape": [3, 224, 224],
                "preprocess": {"mode": "caffe", "image_mean": {}}}
    adapter = TASK.export_adapter(Run("export", {}), nn.Linear(4, 3), manifest)
    export.deepstream_config(tmp_path / "cls.txt", adapter.deepstream, onnx_file="m.onnx", labels_file="labels.txt",
                             input_shape=(3, 224, 224), output_names=adapter.output_names, data_type="int8",
                             max_batch_size=8, cal_cache="m.cal.bin", engine_file="m.engine")
    config = read_config(tmp_path / "cls.txt")
    assert config.sections() == ["property"]
    prop = config["property"]
    assert prop["network-type"] == "1" and prop["classifier-threshold"] == "0.2" and prop["process-mode"] == "2"
    assert prop["output-blob-names"] == "predictions/Softmax" and prop["num-detected-classes"] == "3"
    assert prop["model-color-format"] == "1"  # caffe mode feeds BGR
    assert prop["network-mode"] == "1" and prop["int8-calib-file"] == "m.cal.bin"
    assert prop["model-engine-file"] == "m.engine" and "cluster-mode" not in prop


def test_tensorrt_missing_keeps_the_onnx_with_a_warning(detector, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    result = export.export_model(detector_adapter(detector), tmp_path / "m.onnx", {"input_1": images(2)},
                                 engine_file=tmp_path / "m.engine")
    assert result.onnx.exists() and result.engine is None and not (tmp_path / "m.engine").exists()
    assert "Warning: TensorRT engine not built: the tensorrt Python package does not import" in capsys.readouterr().out
