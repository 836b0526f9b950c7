"""engine.detection.nms.BatchedNMS: TAO's BatchedNMS outputs as ONNX NonMaxSuppression appended to a graph,
equal to the NumPy post-processing; stripped for INT8, swapped for EfficientNMS_TRT for TensorRT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from taoctl.engine import export
from taoctl.engine.detection.nms import OUTPUT_NAMES, BatchedNMS, graph_tail, nms
from taoctl.errors import TaoctlError

WIDTH, HEIGHT, ANCHORS, CLASSES = 96, 64, 300, 3


def passthrough(opset: int = 13) -> onnx.ModelProto:
    """A graph whose outputs boxes [B, N, 4] and scores [B, N, C] are its inputs (decoding done outside)."""
    inputs = [helper.make_tensor_value_info("in_boxes", TensorProto.FLOAT, ["batch", ANCHORS, 4]),
              helper.make_tensor_value_info("in_scores", TensorProto.FLOAT, ["batch", ANCHORS, CLASSES])]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", ANCHORS, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", ANCHORS, CLASSES])]
    nodes = [helper.make_node("Identity", ["in_boxes"], ["boxes"], name="b"),
             helper.make_node("Identity", ["in_scores"], ["scores"], name="s")]
    return helper.make_model(helper.make_graph(nodes, "decoded", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", opset)])


def decoded(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered boxes (many overlaps within and across classes) and scores, several images apart."""
    rng = np.random.default_rng(seed)
    clusters = rng.uniform(10, 80, size=(batch, 8, 2))
    centres = clusters[:, rng.integers(0, 8, ANCHORS)] + rng.normal(0, 3, size=(batch, ANCHORS, 2))
    sizes = rng.uniform(8, 30, size=(batch, ANCHORS, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1).astype(np.float32)
    scores = (rng.uniform(0, 1, size=(batch, ANCHORS, CLASSES)) ** 3).astype(np.float32)
    return boxes, scores


def run(model: onnx.ModelProto, boxes, scores, tmp_path, name="m.onnx") -> dict[str, np.ndarray]:
    path = tmp_path / name
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return export.run_onnx(path, {"in_boxes": boxes, "in_scores": scores})


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("max_candidates", [4000, 120])  # 120 < 300 x 3: the candidate cap in the graph too
@pytest.mark.parametrize("levels", [None, 16])
def test_onnx_outputs_equal_the_numpy_postprocess(tmp_path, batch, max_candidates, levels):
    """``levels``: scores on a coarse grid, as an INT8 model's are; equal scores at the candidate cap, at
    top_k and between overlapping boxes must be broken the same way in the graph and in NumPy."""
    tail = BatchedNMS("boxes", "scores", (WIDTH, HEIGHT), 0.05, 0.45, top_k=25, max_candidates=max_candidates)
    boxes, scores = decoded(batch)
    if levels:
        scores = np.round(scores * levels) / levels
    got = run(tail.append(passthrough()), boxes, scores, tmp_path)
    assert list(got) == list(OUTPUT_NAMES)
    assert got["num_detections"].dtype == np.int32 and got["num_detections"].shape == (batch, 1)
    assert got["nmsed_boxes"].dtype == np.float32 and got["nmsed_boxes"].shape == (batch, 25, 4)
    assert got["nmsed_scores"].shape == got["nmsed_classes"].shape == (batch, 25)
    assert got["nmsed_classes"].dtype == np.float32
    checks = tail.check(got, tail.reference({"boxes": boxes, "scores": scores}))
    assert [failure for _, _, failure in checks] == [None] * 4
    found = nms(boxes, scores, 0.05, 0.45, 25, max_candidates)
    for i, image in enumerate(tail.detections(got)):
        assert len(image.scores) == len(found[i].scores) == int(got["num_detections"][i, 0])
        np.testing.assert_array_equal(image.classes, found[i].classes)
        np.testing.assert_allclose(image.boxes, found[i].boxes, atol=1e-4)
        np.testing.assert_allclose(image.scores, found[i].scores, atol=1e-6)
        assert np.all(np.diff(image.scores) <= 0)
    assert got["num_detections"].max() == 25  # top_k honoured: these images have more survivors than that


def test_padding_is_zero_and_an_image_without_detections_has_none(tmp_path):
    tail = BatchedNMS("boxes", "scores", (WIDTH, HEIGHT), 0.5, 0.5, top_k=40)
    boxes, scores = decoded(2, seed=3)
    scores[1] = 0.0  # the second image scores nothing
    got = run(tail.append(passthrough()), boxes, scores, tmp_path)
    count = got["num_detections"][:, 0]
    assert count[0] > 0 and count[1] == 0
    for i, n in enumerate(count):
        assert not got["nmsed_boxes"][i, n:].any() and not got["nmsed_scores"][i, n:].any()
        assert not got["nmsed_classes"][i, n:].any()
    assert got["nmsed_boxes"][0, :count[0]].max() <= 2.0  # normalised by the input size, not pixels
    assert (got["nmsed_boxes"][0, :count[0], 2:] > got["nmsed_boxes"][0, :count[0], :2]).all()  # x1 y1 x2 y2


def test_per_class_suppression_and_thresholds_are_nms_configs():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.zeros((1, 4, 2), np.float32)
    scores[0, [0, 1, 3], 0] = [0.9, 0.8, 0.6]
    scores[0, 2, 1] = 0.7
    tail = BatchedNMS("boxes", "scores", (100, 100), 0.1, 0.5, top_k=10)
    (image,) = tail.detections(tail.reference({"boxes": boxes, "scores": scores}))
    assert image.classes.tolist() == [0, 1, 0] and image.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    strict = BatchedNMS("boxes", "scores", (100, 100), 0.65, 0.5, top_k=10)
    (image,) = strict.detections(strict.reference({"boxes": boxes, "scores": scores}))
    assert image.scores.tolist() == pytest.approx([0.9, 0.7])
    loose = BatchedNMS("boxes", "scores", (100, 100), 0.1, 0.95, top_k=2)  # nothing overlaps that much; top 2
    (image,) = loose.detections(loose.reference({"boxes": boxes, "scores": scores}))
    assert image.scores.tolist() == pytest.approx([0.9, 0.8])


def test_old_opsets_are_refused_in_one_line():
    with pytest.raises(Exception, match="opset 11 or newer"):
        BatchedNMS("boxes", "scores", (WIDTH, HEIGHT), 0.1, 0.5, 10).append(passthrough(opset=10))


def test_strip_restores_the_decoded_outputs_and_metadata_names_the_tail(tmp_path):
    tail = BatchedNMS("boxes", "scores", (WIDTH, HEIGHT), 0.1, 0.5, 10)
    tailed = tail.append(passthrough())
    assert graph_tail(tailed) == tail
    body = tail.strip(tailed)
    assert [o.name for o in body.graph.output] == ["boxes", "scores"] and graph_tail(body) is None
    assert not any(n.op_type == "NonMaxSuppression" for n in body.graph.node)
    boxes, scores = decoded(2)
    out = run(body, boxes, scores, tmp_path)
    np.testing.assert_array_equal(out["boxes"], boxes)


def test_tensorrt_graph_uses_efficient_nms(tmp_path):
    tail = BatchedNMS("boxes", "scores", (WIDTH, HEIGHT), 0.2, 0.6, 30)
    path = tmp_path / "m.onnx"
    onnx.save(tail.append(passthrough()), str(path))
    rewritten = onnx.load(str(export.tensorrt_graph(path, tmp_path)))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "NonMaxSuppression" not in ops and ops.count("EfficientNMS_TRT") == 1
    plugin = next(n for n in rewritten.graph.node if n.op_type == "EfficientNMS_TRT")
    attributes = {a.name: helper.get_attribute_value(a) for a in plugin.attribute}
    assert attributes["max_output_boxes"] == 30 and attributes["background_class"] == -1
    assert attributes["score_threshold"] == pytest.approx(0.2) and attributes["iou_threshold"] == pytest.approx(0.6)
    assert attributes["box_coding"] == 0 and attributes["score_activation"] == 0
    assert [o.name for o in rewritten.graph.output] == list(OUTPUT_NAMES)
    produced = {name for n in rewritten.graph.node for name in n.output}
    assert set(OUTPUT_NAMES) <= produced
    plain = tmp_path / "plain.onnx"
    onnx.save(passthrough(), str(plain))
    assert export.tensorrt_graph(plain, tmp_path) == plain  # a graph without the tail builds as it is


class Decoded(torch.nn.Module):
    """[B, N, 7] -> boxes [B, N, 4] (x1 y1 x2 y2 pixels) and scores [B, N, 3]: a decoder's outputs."""

    def forward(self, x):
        corner = x[..., :2] * 20 + 40
        boxes = torch.cat([corner, corner + 8 + 10 * x[..., 2:4].abs()], dim=-1)
        return boxes, torch.sigmoid(2 * x[..., 4:7])


def decoded_adapter(tail) -> export.ExportAdapter:
    return export.ExportAdapter(module=Decoded(), input_names=("x",), output_names=("boxes", "scores"),
                                dynamic_axes={"x": {0: export.BATCH}}, tail=tail)


def test_export_checks_the_tail_and_refuses_a_disagreeing_one(tmp_path, capsys, monkeypatch):
    sample = {"x": np.random.default_rng(0).standard_normal((3, ANCHORS, 7), dtype=np.float32)}
    tail = BatchedNMS("boxes", "scores", (WIDTH, HEIGHT), 0.3, 0.5, top_k=15)
    adapter = decoded_adapter(tail)
    assert adapter.graph_outputs == OUTPUT_NAMES
    export.export_model(adapter, tmp_path / "ok.onnx", sample)
    out = capsys.readouterr().out
    assert "ONNX fp32 vs PyTorch on sample inputs: boxes max abs diff" in out  # the decoded tensors vs PyTorch
    assert "vs the same graph's boxes, scores through taoctl's post-processing: num_detections" in out
    got = export.run_onnx(tmp_path / "ok.onnx", sample)
    with torch.no_grad():
        want = adapter.runtime_module()(torch.from_numpy(sample["x"]))
    np.testing.assert_array_equal(got["num_detections"], want[0].numpy())
    np.testing.assert_allclose(got["nmsed_boxes"], want[1].numpy(), atol=1e-5)

    reference = BatchedNMS.reference

    def disagreeing(self, outputs):  # a post-processing that disagrees with the graph
        packed = reference(self, outputs)
        return {**packed, "num_detections": packed["num_detections"] + 1}

    monkeypatch.setattr(BatchedNMS, "reference", disagreeing)
    with pytest.raises(TaoctlError, match="num_detections differs from taoctl's post-processing"):
        export.export_model(adapter, tmp_path / "bad.onnx", sample)
    assert not (tmp_path / "bad.onnx").exists()


def test_sort_nodes_orders_a_shuffled_graph_and_keeps_an_ordered_one():
    model = BatchedNMS("boxes", "scores", (WIDTH, HEIGHT), 0.1, 0.5, 10).append(passthrough())
    ordered = [n.name for n in model.graph.node]
    export.sort_nodes(model.graph)
    assert [n.name for n in model.graph.node] == ordered
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    export.sort_nodes(model.graph)
    onnx.checker.check_model(model, full_check=True)
