"""detectnet_v2 post-processing (DBSCAN / NMS / HYBRID clustering), evaluator and inference writers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from taoctl.engine.metrics.detection import ImageTargets
from taoctl.engine.task import Predictor
from taoctl.errors import TaoctlError
from taoctl.tasks.detectnet_v2 import spec as detectnet_spec
from taoctl.tasks.detectnet_v2.encoding import BBOX_NORM, CELL_OFFSET, STRIDE
from taoctl.tasks.detectnet_v2.evaluation import DetectNetEvaluator, evaluation_settings
from taoctl.tasks.detectnet_v2.inference import overlay_options, write_results
from taoctl.tasks.detectnet_v2.postprocess import (ClusterParams, cluster, cluster_batch, decode,
                                                   params_from_bbox_handler, params_from_postprocessing)

SPECS = Path(__file__).resolve().parents[2] / "shared" / "tao_specs" / "NVIDIA" / "tao_tutorials" / "notebooks" / \
    "tao_launcher_starter_kit" / "detectnet_v2" / "specs"
TRAIN_SPEC = SPECS / "detectnet_v2_train_resnet18_kitti.txt"
INFERENCE_SPEC = SPECS / "detectnet_v2_inference_kitti_tlt.txt"
needs_specs = pytest.mark.skipif(not TRAIN_SPEC.exists(), reason="TAO sample specs not in ../shared")


def params(algorithm="DBSCAN", **overrides) -> ClusterParams:
    values = dict(algorithm=algorithm, coverage_threshold=0.005, minimum_bounding_box_height=4, dbscan_eps=0.3,
                  dbscan_min_samples=1, neighborhood_size=0, dbscan_confidence_threshold=0.1,
                  nms_iou_threshold=0.3, nms_confidence_threshold=0.1, confidence_threshold=0.5)
    values.update(overrides)
    return ClusterParams(**values)


def encode_cell(box, row, col) -> np.ndarray:
    """The (l, t, r, b) targets of one cell for ``box``, written out from the shared convention."""
    cx, cy = col * STRIDE + CELL_OFFSET, row * STRIDE + CELL_OFFSET
    x1, y1, x2, y2 = box
    return np.array([(cx - x1) / BBOX_NORM, (cy - y1) / BBOX_NORM, (x2 - cx) / BBOX_NORM, (y2 - cy) / BBOX_NORM])


def grids(objects, num_classes, height, width, coverage=0.9):
    """Coverage / bbox maps where every cell whose centre lies in an object's box predicts that box."""
    cov = np.zeros((num_classes, height // STRIDE, width // STRIDE), np.float32)
    bbox = np.zeros((4 * num_classes, height // STRIDE, width // STRIDE), np.float32)
    for k, box in objects:
        for row in range(cov.shape[1]):
            for col in range(cov.shape[2]):
                cx, cy = col * STRIDE + CELL_OFFSET, row * STRIDE + CELL_OFFSET
                if box[0] <= cx <= box[2] and box[1] <= cy <= box[3]:
                    cov[k, row, col] = coverage
                    bbox[4 * k:4 * k + 4, row, col] = encode_cell(box, row, col)
    return cov, bbox


def test_decode_inverts_the_encoding():
    rng = np.random.default_rng(0)
    grid_h, grid_w, classes = 3, 5, 2
    boxes = np.empty((classes, grid_h, grid_w, 4))
    bbox = np.empty((4 * classes, grid_h, grid_w), np.float32)
    for k in range(classes):
        for row in range(grid_h):
            for col in range(grid_w):
                x1, y1 = rng.uniform(0, 60, 2)
                boxes[k, row, col] = (x1, y1, x1 + rng.uniform(5, 40), y1 + rng.uniform(5, 40))
                bbox[4 * k:4 * k + 4, row, col] = encode_cell(boxes[k, row, col], row, col)
    cov = rng.uniform(size=(classes, grid_h, grid_w)).astype(np.float32)
    decoded, scores = decode(cov, bbox)
    assert decoded.shape == (classes, grid_h, grid_w, 4)
    np.testing.assert_allclose(decoded, boxes, atol=1e-3)
    np.testing.assert_array_equal(scores, cov)
    with pytest.raises(TaoctlError, match="do not match"):
        decode(cov, bbox[:4])


def test_nms_keeps_one_box_per_object_and_both_distant_objects():
    # Two cars 100 px apart; every cell inside each predicts a slightly jittered copy.
    cov, bbox = grids([(0, (8, 8, 56, 56)), (0, (120, 8, 168, 56))], 1, 64, 176)
    rng = np.random.default_rng(1)
    cov[cov > 0] = rng.uniform(0.5, 0.95, int((cov > 0).sum()))
    bbox[:, cov[0] > 0] += rng.normal(0, 0.02, (4, int((cov > 0).sum()))).astype(np.float32)
    (boxes, confidences), = cluster(cov, bbox, [params("NMS")], (176, 64))
    assert len(boxes) == 2
    assert np.all(np.diff(confidences) <= 0)
    # The survivors are the best proposal of each object, with its coverage as confidence.
    assert confidences[0] == pytest.approx(cov.max())
    np.testing.assert_allclose(np.sort(boxes[:, 0]), [8, 120], atol=3)


def test_dbscan_merges_a_blob_into_its_coverage_weighted_mean():
    box = np.array([20.0, 10.0, 60.0, 50.0])
    cov, bbox = grids([(0, box)], 1, 64, 80)
    cells = np.argwhere(cov[0] > 0)
    assert len(cells) >= 4
    rng = np.random.default_rng(2)
    weights = rng.uniform(0.3, 0.9, len(cells)).astype(np.float32)
    proposals = box + rng.normal(0, 2, (len(cells), 4))
    for (row, col), weight, proposal in zip(cells, weights, proposals):
        cov[0, row, col] = weight
        bbox[:, row, col] = encode_cell(proposal, row, col)
    (boxes, confidences), = cluster(cov, bbox, [params("DBSCAN")], (80, 64))
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], np.average(proposals, axis=0, weights=weights), atol=1e-3)
    assert confidences[0] == pytest.approx(weights.sum(), rel=1e-5)  # TAO's aggregate_cov


def test_dbscan_confidence_threshold_and_min_samples_are_cumulative_coverage():
    cov, bbox = grids([(0, (8, 8, 56, 56))], 1, 64, 64, coverage=0.2)
    candidates = int((cov > 0).sum())
    (boxes, _), = cluster(cov, bbox, [params(dbscan_confidence_threshold=0.2 * candidates + 0.01)], (64, 64))
    assert len(boxes) == 0
    # A neighbourhood of total weight 0.2 * candidates cannot make a core point needing more.
    (boxes, _), = cluster(cov, bbox, [params(dbscan_min_samples=candidates)], (64, 64))
    assert len(boxes) == 0
    (boxes, _), = cluster(cov, bbox, [params(dbscan_min_samples=1)], (64, 64))
    assert len(boxes) == 1


def test_hybrid_runs_nms_over_the_clusters_dbscan_kept():
    cov, bbox = grids([(0, (8, 8, 56, 56)), (0, (120, 8, 168, 56))], 1, 64, 176)
    left = np.zeros_like(cov[0], dtype=bool)
    left[:, :5] = True
    cov[0][left & (cov[0] > 0)] = 0.05  # the left object's cluster sums to less than the threshold
    right = np.argwhere((cov[0] > 0) & ~left)
    cov[0][tuple(right[0])] = 0.95
    (boxes, confidences), = cluster(cov, bbox, [params("HYBRID", dbscan_confidence_threshold=0.5,
                                                       nms_confidence_threshold=0.01)], (176, 64))
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], (120, 8, 168, 56), atol=1e-3)
    assert confidences[0] == pytest.approx(0.95)  # NMS confidence: the proposal's coverage


@pytest.mark.parametrize("algorithm", ["DBSCAN", "NMS", "HYBRID"])
def test_minimum_bounding_box_height_drops_small_boxes(algorithm):
    cov, bbox = grids([(0, (8, 12, 56, 21.5)), (0, (120, 8, 168, 56))], 1, 64, 176)
    (boxes, _), = cluster(cov, bbox, [params(algorithm, minimum_bounding_box_height=10)], (176, 64))
    np.testing.assert_allclose(boxes, [(120, 8, 168, 56)], atol=1e-3)
    (boxes, _), = cluster(cov, bbox, [params(algorithm, minimum_bounding_box_height=9)], (176, 64))
    assert len(boxes) == 2


def test_boxes_are_clipped_to_the_network_input():
    cov, bbox = grids([(0, (-10, 4, 40, 70))], 1, 64, 64)
    (boxes, _), = cluster(cov, bbox, [params("NMS")], (64, 64))
    np.testing.assert_allclose(boxes, [(0, 4, 40, 64)], atol=1e-3)


def test_cluster_batch_on_an_evaluation_sized_load():
    # ~100 validation images of 26 x 20 cells x 3 classes, every cell above the coverage threshold
    # (its speed is bench/bench_detectnet.py's, not a test's).
    rng = np.random.default_rng(3)
    cov = rng.uniform(0.0, 0.3, (100, 3, 20, 26)).astype(np.float32)
    bbox = rng.uniform(0.2, 1.0, (100, 12, 20, 26)).astype(np.float32)
    for algorithm in ("DBSCAN", "NMS"):
        out = cluster_batch(cov, bbox, [params(algorithm)] * 3, (416, 320))
        assert len(out) == 100 and all(len(per_class) == 3 for per_class in out)


@needs_specs
def test_params_from_tao_specs():
    experiment = detectnet_spec.load(TRAIN_SPEC, "experiment")
    classes = list(experiment.cost_function_config.target_classes[i].name for i in range(3))
    found = params_from_postprocessing(experiment.postprocessing_config, classes)
    assert [p.algorithm for p in found] == ["DBSCAN"] * 3
    assert found[0].dbscan_eps == pytest.approx(0.2) and found[0].minimum_bounding_box_height == 20
    with pytest.raises(TaoctlError, match=r"postprocessing_config.target_class_config .*'truck'"):
        params_from_postprocessing(experiment.postprocessing_config, ["car", "truck"])
    settings = evaluation_settings(experiment.evaluation_config, ["car", "cyclist", "pedestrian"])
    assert settings["iou_thresholds"]["car"] == pytest.approx(0.7)
    assert settings["box_filters"]["car"].minimum_height == 20 and settings["ap_mode"] == "INTEGRATE"
    with pytest.raises(TaoctlError, match="minimum_detection_ground_truth_overlap .*'truck'"):
        evaluation_settings(experiment.evaluation_config, ["truck"])

    inference = detectnet_spec.load(INFERENCE_SPEC, "inference")
    handler = params_from_bbox_handler(inference.bbox_handler_config, ["car", "cyclist", "pedestrian"])
    assert handler[0].dbscan_eps == pytest.approx(0.3)
    assert handler[0].nms_iou_threshold == pytest.approx(0.3) and handler[0].nms_confidence_threshold == 0.1
    # A class without an entry takes the spec's "default" one; with neither it is an error.
    entries = inference.bbox_handler_config.classwise_bbox_handler_config
    assert params_from_bbox_handler(inference.bbox_handler_config, ["truck"])[0].dbscan_eps == pytest.approx(
        entries["default"].clustering_config.dbscan_eps)
    del entries["default"]
    with pytest.raises(TaoctlError, match='no "default" entry'):
        params_from_bbox_handler(inference.bbox_handler_config, ["truck"])
    options = overlay_options(inference.bbox_handler_config, ["car", "cyclist", "pedestrian"])
    assert options.kitti_dump and not options.disable_overlay and options.line_width == 2
    assert options.colors["pedestrian"] == (255, 0, 0) and options.classes is None


class GridPredictor(Predictor):
    """Outputs the grids of fixed per-image objects, as a trained model that sees them would."""

    def __init__(self, objects_per_image, num_classes, height, width):
        super().__init__(lambda images: images, {}, "fake-model")
        self.maps = [grids(objects, num_classes, height, width) for objects in objects_per_image]
        self.seen = 0

    def __call__(self, images):
        batch = self.maps[self.seen:self.seen + len(images)]
        self.seen += len(images)
        return [np.stack([c for c, _ in batch]), np.stack([b for _, b in batch])]


def evaluation_data():
    classes = ["car", "pedestrian"]
    objects = [[(0, (8, 8, 56, 56)), (1, (72, 16, 120, 60))],
               [(1, (8, 8, 40, 60))],
               [(0, (60, 4, 120, 40)), (0, (4, 30, 40, 62))]]
    targets = [ImageTargets(np.array([b for _, b in objs], float), np.array([k for k, _ in objs])) for objs in objects]
    images = np.zeros((len(objects), 3, 64, 128), np.uint8)
    return classes, objects, targets, images


def make_evaluator(targets, images, classes, cost=None):
    return DetectNetEvaluator(images, targets, classes, [params("DBSCAN", confidence_threshold=0.5)] * 2,
                              batch_size=2, iou_thresholds={"car": 0.7, "pedestrian": 0.5}, box_filters=None,
                              ap_mode="INTEGRATE", cost=cost)


def test_evaluator_scores_perfect_outputs_100_and_shifted_ones_less(tmp_path, capsys):
    classes, objects, targets, images = evaluation_data()
    costs = []
    evaluator = make_evaluator(targets, images, classes,
                               cost=lambda outputs, batch: costs.append(batch) or 0.5 * (batch.stop - batch.start))
    report = evaluator.run(GridPredictor(objects, 2, 64, 128))
    assert report["mAP"] == pytest.approx(1.0)
    assert report["classes"]["car"]["recall"] == 1.0 and report["classes"]["car"]["precision"] == 1.0
    assert report["validation_cost"] == pytest.approx(0.5) and costs == [slice(0, 2), slice(2, 3)]
    assert evaluator.summary(report) == {"mAP": pytest.approx(1.0), "cost": pytest.approx(0.5)}
    assert report["median_inference_time"] > 0 and report["model"] == "fake-model"

    evaluator.write(report, tmp_path)
    printed = capsys.readouterr().out
    for line in ("Validation cost: 0.500000", "Mean average_precision (in %): 100.0000", "class name",
                 "average precision (in %)", "Median Inference Time: "):
        assert line in printed
    assert any(line.startswith("car") and line.split()[-1] == "100.0000" for line in printed.splitlines())
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["mAP"] == pytest.approx(1.0) and "curve" not in written["classes"]["car"]
    assert (tmp_path / "PR_curve.png").read_bytes()[:4] == b"\x89PNG"

    # Cars predicted 20 px to the right: IoU below 0.7, so car AP falls to 0; pedestrians still count.
    shifted = [[(k, (b[0] + 20, b[1], b[2] + 20, b[3]) if k == 0 else b) for k, b in objs] for objs in objects]
    report = make_evaluator(targets, images, classes).run(GridPredictor(shifted, 2, 64, 128))
    assert report["classes"]["car"]["ap"] == 0.0 and report["classes"]["pedestrian"]["ap"] == pytest.approx(1.0)
    assert report["mAP"] == pytest.approx(0.5) and report["validation_cost"] is None


def test_evaluator_results_json_has_null_for_nan(tmp_path, capsys):
    classes, objects, targets, images = evaluation_data()
    evaluator = make_evaluator(targets, images, classes, cost=lambda outputs, batch: float("nan"))
    report = evaluator.run(GridPredictor(objects, 2, 64, 128))
    evaluator.write(report, tmp_path)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["validation_cost"] is None
    assert "Validation cost: nan" in capsys.readouterr().out


def test_write_results_writes_scaled_kitti_labels_and_an_annotated_image(tmp_path):
    image_path = tmp_path / "in" / "frame_7.png"
    image_path.parent.mkdir()
    Image.new("RGB", (256, 128), (10, 10, 10)).save(image_path)
    detections = [(np.array([[8, 8, 56, 56]], np.float32), np.array([1.7], np.float32)),
                  (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))]
    options = overlay_options(None, ["car", "pedestrian"])
    write_results(tmp_path / "out", str(image_path), (256, 128), (128, 64), detections, ["car", "pedestrian"],
                  options)
    fields = (tmp_path / "out" / "labels" / "frame_7.txt").read_text().split()
    assert len(fields) == 16 and fields[0] == "car"
    np.testing.assert_allclose([float(v) for v in fields[4:8]], [16, 16, 112, 112])
    assert float(fields[15]) == pytest.approx(1.7)
    annotated = np.asarray(Image.open(tmp_path / "out" / "images_annotated" / "frame_7.png"))
    assert annotated.shape == (128, 256, 3)
    assert tuple(annotated[60, 16]) == options.colors["car"]  # the box's left edge, in the class colour
    assert tuple(annotated[60, 60]) == (10, 10, 10)  # inside the box: untouched

    # TAO writes no labels without kitti_dump, and no image with disable_overlay.
    options.kitti_dump, options.disable_overlay = False, True
    write_results(tmp_path / "quiet", str(image_path), (256, 128), (128, 64), detections, ["car", "pedestrian"],
                  options)
    assert not (tmp_path / "quiet").exists()
