"""yolo_v3's parts on their own: anchors (spec strings, k-means), target assignment, decoding, NMS, loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taoctl.engine.detection.anchors import format_anchor_shape, kmeans_anchors, parse_anchor_shape
from taoctl.engine.detection.yolo import LossWeights, YoloDecode, YoloLoss, assign_targets, greedy_nms, nms
from taoctl.errors import TaoctlError

ANCHORS = [np.array([[10, 10], [20, 12], [12, 24]], np.float32),
           np.array([[30, 30], [50, 30], [30, 50]], np.float32),
           np.array([[80, 80], [120, 70], [70, 120]], np.float32)]
STRIDES = (8, 16, 32)
WIDTH, HEIGHT = 128, 96


def test_anchor_strings_round_trip_and_bad_ones_name_the_field():
    text = "[(114.94, 60.67), (159.06, 114.59), (297.59, 176.38)]"
    anchors = parse_anchor_shape(text, "yolov3_config.big_anchor_shape")
    assert anchors.shape == (3, 2) and anchors[2, 1] == pytest.approx(176.38)
    assert format_anchor_shape(anchors) == text
    for bad in ("[(1, 2), (3,)]", "[(1, -2)]", "big", "[]"):
        with pytest.raises(TaoctlError, match="yolov3_config.big_anchor_shape"):
            parse_anchor_shape(bad, "yolov3_config.big_anchor_shape")


def test_kmeans_finds_the_shapes_boxes_come_in_and_repeats_with_its_seed():
    rng = np.random.default_rng(1)
    centres = np.array([[10, 40], [40, 10], [60, 60]], np.float64)
    boxes = np.concatenate([c * rng.uniform(0.95, 1.05, (50, 2)) for c in centres])
    anchors, mean_iou = kmeans_anchors(boxes, 3, seed=3)
    # Sorted by area: the two thin shapes (same area) first, the big square last.
    assert sorted(map(tuple, anchors[:2].round(-1))) == [(10.0, 40.0), (40.0, 10.0)]
    assert tuple(anchors[2].round(-1)) == (60.0, 60.0)
    assert mean_iou > 0.9
    again, _ = kmeans_anchors(boxes, 3, seed=3)
    assert np.array_equal(anchors, again)
    with pytest.raises(TaoctlError, match="distinct box shapes"):
        kmeans_anchors(boxes[:2], 3)


def test_a_box_lands_on_its_best_anchor_in_the_cell_of_its_centre():
    anchors = [torch.from_numpy(a) for a in ANCHORS]
    grids = [(HEIGHT // s, WIDTH // s) for s in STRIDES]
    # 48 x 28 at centre (70, 42): best shape is (50, 30), anchor 1 of stride 16 -> cell (row 2, col 4).
    # 11 x 23 at centre (20.5, 60.5): best shape is (12, 24), anchor 2 of stride 8 -> cell (7, 2).
    boxes = [torch.tensor([[46.0, 28.0, 94.0, 56.0]]), torch.tensor([[15.0, 49.0, 26.0, 72.0]])]
    classes = [torch.tensor([2]), torch.tensor([0])]
    targets = assign_targets(boxes, classes, anchors, STRIDES, grids)
    assert [int(t.positive.sum()) for t in targets] == [1, 1, 0]
    assert targets[1].positive[0, 1, 2, 4] and targets[1].cls[0, 1, 2, 4] == 2
    assert targets[1].offset[0, 1, 2, 4].tolist() == pytest.approx([70 / 16 - 4, 42 / 16 - 2])
    assert targets[1].size[0, 1, 2, 4].tolist() == [48.0, 28.0]
    assert targets[0].positive[1, 2, 7, 2] and targets[0].cls[1, 2, 7, 2] == 0


def _raw_for(boxes_by_level, num_classes=2):
    """Raw head outputs whose decoding gives ``boxes_by_level`` [(level, anchor, row, col, box, class)]."""
    raws = [torch.full((1, 3 * (5 + num_classes), HEIGHT // s, WIDTH // s), -12.0) for s in STRIDES]
    for level, anchor, row, col, (x1, y1, x2, y2), cls in boxes_by_level:
        stride, (aw, ah) = STRIDES[level], ANCHORS[level][anchor]
        fx, fy = (x1 + x2) / 2 / stride - col, (y1 + y2) / 2 / stride - row
        values = [np.log(fx / (1 - fx)), np.log(fy / (1 - fy)), np.log((x2 - x1) / aw), np.log((y2 - y1) / ah), 12.0]
        values += [12.0 if k == cls else -12.0 for k in range(num_classes)]
        base = anchor * (5 + num_classes)
        raws[level][0, base:base + 5 + num_classes, row, col] = torch.tensor(values, dtype=torch.float32)
    return raws


def test_decode_inverts_the_encoding_and_nms_keeps_the_best_per_class():
    decode = YoloDecode(ANCHORS, STRIDES, 2)
    wanted = (46.0, 28.0, 94.0, 56.0)
    raws = _raw_for([(1, 1, 2, 4, wanted, 1),
                     (1, 2, 2, 4, (47.0, 29.0, 95.0, 57.0), 1),  # a near-duplicate of the same class
                     (0, 0, 1, 1, (6.0, 8.0, 16.0, 18.0), 0)])
    with torch.no_grad():
        boxes, scores = decode(raws)
    assert boxes.shape == (1, 3 * (12 * 16 + 6 * 8 + 3 * 4), 4) and scores.shape[-1] == 2
    best = int(scores[0, :, 1].argmax())
    assert boxes[0, best].tolist() == pytest.approx(wanted, abs=1e-3)
    (found,) = nms(boxes.numpy(), scores.numpy(), confidence_threshold=0.5, iou_threshold=0.5, top_k=10)
    assert sorted(found.classes.tolist()) == [0, 1]  # the duplicate is suppressed, the other class kept
    assert found.scores[0] >= found.scores[1] and found.scores.min() > 0.99
    (only_best,) = nms(boxes.numpy(), scores.numpy(), confidence_threshold=0.5, iou_threshold=0.5, top_k=1)
    assert len(only_best.scores) == 1


def test_greedy_nms_only_suppresses_within_a_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert greedy_nms(boxes, scores, classes, 0.5, 10).tolist() == [0, 2, 3]
    assert greedy_nms(boxes, scores, classes, 0.5, 2).tolist() == [0, 2]


def test_loss_prefers_the_right_answer_and_neutral_anchors_cost_no_objectness():
    decode = YoloDecode(ANCHORS, STRIDES, 2)
    loss = YoloLoss(decode, LossWeights(), (WIDTH, HEIGHT))
    box, cls = (46.0, 28.0, 94.0, 56.0), 1
    boxes, classes = [torch.tensor([box])], [torch.tensor([cls])]
    right, terms = loss(_raw_for([(1, 1, 2, 4, box, cls)]), boxes, classes)
    wrong, _ = loss(_raw_for([(1, 1, 2, 4, (60.0, 36.0, 84.0, 48.0), 0)]), boxes, classes)
    assert float(right) < 0.05 < float(wrong)
    assert terms["loc"] < 1e-6
    # A second, unassigned anchor confidently predicting a box of IoU 0.74 with the truth is neutral under
    # TAO's 0.7 (no objectness loss for it), and a negative under 0.8.
    near = (50.0, 30.0, 98.0, 58.0)
    two = _raw_for([(1, 1, 2, 4, box, cls), (1, 2, 2, 4, near, cls)])
    _, terms_neutral = loss(two, boxes, classes)
    assert terms_neutral["noobj"] == pytest.approx(terms["noobj"], rel=1e-3)
    strict = YoloLoss(decode, LossWeights(ignore_iou=0.8), (WIDTH, HEIGHT))
    _, terms_strict = strict(two, boxes, classes)
    assert terms_strict["noobj"] > 100 * terms_neutral["noobj"]


# --------------------------------------------------------------------------- export: TAO's BatchedNMS outputs
def _small_yolo(seed: int = 0):
    from taoctl.tasks.yolo_v3 import model as yolo_model

    arguments = {"arch": "resnet", "n_layers": 10, "input_image_size": "3,64,96", "arch_conv_blocks": 0,
                 "force_relu": False, "anchors": [a.tolist() for a in ANCHORS]}
    torch.manual_seed(seed)
    model = yolo_model.build(arguments, 2).eval()
    with torch.no_grad():  # livelier heads than a fresh model's "nothing here" objectness: many candidates
        for head in (model.conv_sm_object, model.conv_mid_object, model.conv_big_object):
            head.weight.normal_(std=0.3)
            head.bias.view(-1, 7)[:, 4] = 0.0
    manifest = {"task": "yolo_v3", "model": arguments, "classes": ["blue", "red"], "input_shape": [3, 64, 96],
                "normalizer": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "bgr": False}}
    return model, manifest


def _run_with_nms(top_k: int = 12, confidence: float = 0.05, iou: float = 0.5):
    from google.protobuf import text_format

    from taoctl.engine.task import Run
    from taoctl.tasks.yolo_v3.proto import experiment_pb2

    spec = text_format.Parse(f"nms_config {{ confidence_threshold: {confidence} clustering_iou_threshold: {iou} "
                             f"top_k: {top_k} }}", experiment_pb2.Experiment())
    return Run("export", {}, spec=spec)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 64, 96), dtype=np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from taoctl.engine import export
    from taoctl.tasks.yolo_v3.task import TASK

    model, manifest = _small_yolo()
    run = _run_with_nms(top_k=12)
    adapter = TASK.export_adapter(run, model, manifest)
    path = tmp_path_factory.mktemp("yolo_export") / "model.onnx"
    export.export_model(adapter, path, {"Input": _images(2)}, gen_ds_config=True)
    return run, model, manifest, adapter, path


def test_export_writes_taos_batched_nms_outputs(exported):
    import onnx

    _, _, _, _, path = exported
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["num_detections", "nmsed_boxes", "nmsed_scores", "nmsed_classes"]
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    types = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    assert shapes == {"num_detections": ["batch", 1], "nmsed_boxes": ["batch", 12, 4], "nmsed_scores": ["batch", 12],
                      "nmsed_classes": ["batch", 12]}
    assert types == {"num_detections": onnx.TensorProto.INT32, "nmsed_boxes": onnx.TensorProto.FLOAT,
                     "nmsed_scores": onnx.TensorProto.FLOAT, "nmsed_classes": onnx.TensorProto.FLOAT}
    nms_node = next(n for n in graph.node if n.op_type == "NonMaxSuppression")
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    assert values[nms_node.input[3]].tolist() == pytest.approx([0.5])  # clustering_iou_threshold
    assert values[nms_node.input[4]].tolist() == pytest.approx([0.05])  # confidence_threshold


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_outputs_equal_the_pytorch_postprocess(exported, batch):
    from taoctl.engine import export
    from taoctl.tasks.yolo_v3.task import TASK

    run, model, manifest, adapter, path = exported
    images = _images(batch, seed=batch)
    got = export.run_onnx(path, images)
    with torch.no_grad():
        want = [t.numpy() for t in adapter.runtime_module()(torch.from_numpy(images))]
    assert [a.shape for a in want] == [a.shape for a in got.values()] == [(batch, 1), (batch, 12, 4), (batch, 12),
                                                                          (batch, 12)]
    count = got["num_detections"][:, 0]
    np.testing.assert_array_equal(count, want[0][:, 0])
    assert count.max() == 12  # top_k: more than 12 survive NMS on these lively heads
    postprocess = TASK.postprocess(run.spec, 96, 64)
    for onnx_image, torch_image in zip(postprocess(list(got.values())), postprocess(want)):
        np.testing.assert_array_equal(onnx_image.classes, torch_image.classes)
        np.testing.assert_allclose(onnx_image.boxes, torch_image.boxes, atol=1e-2)  # input pixels
        np.testing.assert_allclose(onnx_image.scores, torch_image.scores, atol=1e-4)
    for i, n in enumerate(count):  # padding rows are zero
        assert not got["nmsed_boxes"][i, n:].any() and not got["nmsed_scores"][i, n:].any()
        assert not got["nmsed_classes"][i, n:].any()


def test_deepstream_config_reads_the_batched_nms_outputs(exported):
    import configparser

    _, _, _, _, path = exported
    config = configparser.ConfigParser()
    config.optionxform = str
    config.read(path.parent / "nvinfer_config.txt")
    prop = config["property"]
    assert prop["output-blob-names"] == "num_detections;nmsed_boxes;nmsed_scores;nmsed_classes"
    assert prop["parse-bbox-func-name"] == "NvDsInferParseCustomBatchedNMSTLT"
    assert prop["custom-lib-path"].endswith("/lib/libnvds_infercustomparser.so")
    assert prop["cluster-mode"] == "3" and prop["network-type"] == "0" and prop["num-detected-classes"] == "2"
    assert dict(config["class-attrs-all"]) == {"pre-cluster-threshold": "0.05"}
    assert (path.parent / "labels.txt").read_text() == "blue\nred\n"


@pytest.mark.parametrize("data_type", ["fp16", "int8"])
def test_fp16_and_int8_exports_keep_the_nms_tail_in_float(exported, tmp_path, capsys, data_type):
    import onnx

    from taoctl.engine import export

    _, _, _, adapter, _ = exported
    calibration = [{"Input": _images(2, seed=s)} for s in range(2)]
    path = tmp_path / f"{data_type}.onnx"
    export.export_model(adapter, path, {"Input": _images(2)}, data_type=data_type, calibration=calibration)
    out = capsys.readouterr().out
    assert "through taoctl's post-processing: num_detections" in out
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["num_detections", "nmsed_boxes", "nmsed_scores", "nmsed_classes"]
    produced_by = {name: n for n in graph.node for name in n.output}
    nms_node = next(n for n in graph.node if n.op_type == "NonMaxSuppression")
    assert not any(n.name.startswith("BatchedNMS/") and n.op_type in ("QuantizeLinear", "DequantizeLinear")
                   for n in graph.node)
    assert all(graph_input in {i.name for i in graph.initializer} or produced_by[graph_input].op_type
               not in ("QuantizeLinear",) for graph_input in nms_node.input)
    if data_type == "int8":
        assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    got = export.run_onnx(path, _images(3, seed=5))
    assert got["num_detections"].shape == (3, 1) and got["nmsed_boxes"].shape == (3, 12, 4)


def test_an_int8_deploy_calibration_quantises_the_network_and_keeps_the_tail(exported, tmp_path):
    import onnx

    from taoctl.engine import export

    _, _, _, _, path = exported
    int8 = tmp_path / "int8.onnx"
    export.quantize_int8(path, int8, [{"Input": _images(2)}])
    graph = onnx.load(str(int8)).graph
    assert [o.name for o in graph.output] == ["num_detections", "nmsed_boxes", "nmsed_scores", "nmsed_classes"]
    quantised = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantised and not any(n.name.startswith("BatchedNMS/") for n in quantised)
    assert export.run_onnx(int8, _images(1))["num_detections"].shape == (1, 1)
