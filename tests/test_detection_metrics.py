"""Detection AP: a hand-computed VOC2007 case, a brute-force property test, and pycocotools at IoU 0.5."""

import contextlib
import io
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taoctl.engine.metrics import detection as dm


def _targets(boxes, classes, difficult=None):
    return dm.ImageTargets(np.array(boxes, float).reshape(-1, 4), np.array(classes, int),
                           None if difficult is None else np.array(difficult, bool))


def _dets(boxes, classes, scores):
    return dm.ImageDetections(np.array(boxes, float).reshape(-1, 4), np.array(classes, int), np.array(scores, float))


def test_hand_computed_voc2007_case():
    # Two images, one class, 4 ground-truth boxes (one difficult). In descending confidence:
    # 0.9 TP (img0 gt0), 0.8 FP (duplicate of img0 gt0), 0.7 ignored (hits the difficult box),
    # 0.6 TP (img1 gt0), 0.5 FP (no overlap), 0.4 TP (img1 gt1).  3 evaluable boxes.
    targets = [_targets([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [False, True]),
               _targets([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    dets = [_dets([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 61]], [0, 0, 0], [0.9, 0.8, 0.7]),
            _dets([[0, 0, 10, 11], [80, 80, 90, 90], [20, 21, 30, 30]], [0, 0, 0], [0.6, 0.5, 0.4])]
    result = dm.evaluate(targets, dets, ["a"], mode="SAMPLE")
    c = result.classes[0]
    # TP/FP sequence T F T F T -> precision 1, 1/2, 2/3, 2/4, 3/5; recall 1/3, 1/3, 2/3, 2/3, 1.
    np.testing.assert_allclose(c.precision, [1, 0.5, 2 / 3, 0.5, 0.6])
    np.testing.assert_allclose(c.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    # 11-point: t=0..0.3 -> 1 (4 points; linspace's 0.30000000000000004 > 1/3? no: 1/3 >= 0.3 -> 1),
    # t=0.4..0.6 -> max precision at recall >= t = 2/3 (3 points), t=0.7..1.0 -> 0.6 (4 points).
    expected = (4 * 1 + 3 * (2 / 3) + 4 * 0.6) / 11
    assert c.ap == pytest.approx(expected, abs=1e-12)
    # INTEGRATE: envelope 1 on [0, 1/3], 2/3 on (1/3, 2/3], 0.6 on (2/3, 1].
    integrate = dm.evaluate(targets, dets, ["a"], mode="INTEGRATE").classes[0].ap
    assert integrate == pytest.approx((1 + 2 / 3 + 0.6) / 3, abs=1e-12)
    assert c.num_ground_truth == 3 and c.num_detections == 5
    # Operating point at confidence 0.55: detections 0.9, 0.8, 0.6 (0.7 ignored) -> P 2/3, R 2/3.
    op = dm.evaluate(targets, dets, ["a"], operating_confidence=0.55).classes[0]
    assert (op.operating_precision, op.operating_recall) == pytest.approx((2 / 3, 2 / 3))


def test_thresholds_filters_floor_and_outputs(tmp_path):
    targets = [_targets([[0, 0, 10, 10], [100, 100, 102, 102]], [0, 1])]
    dets = [_dets([[0, 0, 10, 14], [100, 100, 102, 102], [30, 30, 40, 40]], [0, 1, 0], [0.9, 0.8, 0.005])]
    # IoU of the class-0 detection is 100/140 = 0.714: a TP at 0.7, a FP at 0.75.
    assert dm.evaluate(targets, dets, ["a", "b"], iou_threshold={"a": 0.7}).classes[0].ap == pytest.approx(1.0)
    assert dm.evaluate(targets, dets, ["a", "b"], iou_threshold={"a": 0.75}).classes[0].ap == 0.0
    # The 0.005 false positive is under the 0.01 floor: precision stays 1.
    assert dm.evaluate(targets, dets, ["a", "b"]).classes[0].num_detections == 1
    # A minimum height of 5 px excludes the tiny "b" box and its detection: no evaluable truth.
    filtered = dm.evaluate(targets, dets, ["a", "b"], box_filters={"b": dm.BoxFilter(minimum_height=5)})
    assert filtered.classes[1].num_ground_truth == 0 and filtered.classes[1].num_detections == 0
    assert filtered.mean_ap == pytest.approx(1.0)  # mean over classes with ground truth
    result = dm.evaluate(targets, dets, ["a", "b"])
    result.write_json(tmp_path / "results.json")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["AP_a"] == 1.0 and data["AP_b"] == 1.0 and data["mAP"] == 1.0
    result.plot_pr_curves(tmp_path / "PR_curve.png")
    assert (tmp_path / "PR_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "Mean average_precision (in %): 100.0000" in result.table()


def _brute_force(targets, dets, num_classes, thr, mode):
    """Loop-by-loop VOC evaluation, written independently of the vectorized one."""
    aps = []
    for k in range(num_classes):
        entries = []
        for i, d in enumerate(dets):
            for j in range(len(d.classes)):
                if d.classes[j] == k and d.scores[j] >= 0.01:
                    entries.append((-d.scores[j], i, j))
        entries.sort(key=lambda e: e[0])  # stable: ties keep image/detection order
        matched = {}
        n_gt = sum(int(np.sum((t.classes == k) & ~(t.difficult if t.difficult is not None else False)))
                   for t in targets)
        flags = []
        for _, i, j in entries:
            t = targets[i]
            box = dets[i].boxes[j]
            best, best_g = -1.0, -1
            for g in range(len(t.classes)):
                if t.classes[g] != k:
                    continue
                ix = max(0.0, min(box[2], t.boxes[g][2]) - max(box[0], t.boxes[g][0]))
                iy = max(0.0, min(box[3], t.boxes[g][3]) - max(box[1], t.boxes[g][1]))
                inter = ix * iy
                union = ((box[2] - box[0]) * (box[3] - box[1]) +
                         (t.boxes[g][2] - t.boxes[g][0]) * (t.boxes[g][3] - t.boxes[g][1]) - inter)
                o = inter / union if union > 0 else 0.0
                if o > best:
                    best, best_g = o, g
            if best >= thr:
                if t.difficult is not None and t.difficult[best_g]:
                    continue
                if matched.get((i, best_g)):
                    flags.append(False)
                else:
                    matched[(i, best_g)] = True
                    flags.append(True)
            else:
                flags.append(False)
        if n_gt == 0:
            aps.append(0.0)
            continue
        prec, rec, tp = [], [], 0
        for n, f in enumerate(flags, 1):
            tp += f
            prec.append(tp / n)
            rec.append(tp / n_gt)
        if mode == "SAMPLE":
            total = 0.0
            for t in np.linspace(0, 1, 11):
                total += max([p for p, r in zip(prec, rec) if r >= t], default=0.0)
            aps.append(total / 11)
        else:  # each new true positive adds 1/n_gt of recall at the best precision from there on
            ap, last = 0.0, 0.0
            for n in range(len(flags)):
                if rec[n] > last:
                    ap += (rec[n] - last) * max(prec[n:])
                    last = rec[n]
            aps.append(ap)
    return aps


@st.composite
def _scene(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_images = draw(st.integers(1, 6))
    targets, dets = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 50, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 30, (n, 2))], axis=1)
        targets.append(dm.ImageTargets(boxes, rng.integers(0, 2, n), rng.random(n) < 0.15))
        m = int(rng.integers(0, 10))
        # Detections: jittered copies of truth boxes plus random ones, with (rare) tied scores.
        src = boxes[rng.integers(0, n, m)] if n else rng.uniform(0, 50, (m, 4))
        jitter = src + rng.normal(0, 3, (m, 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        scores = np.round(rng.random(m), 2)
        dets.append(dm.ImageDetections(jitter, rng.integers(0, 2, m), scores))
    return targets, dets


@settings(max_examples=150, deadline=None)
@given(_scene(), st.sampled_from([0.3, 0.5, 0.7]), st.sampled_from(dm.MODES))
def test_matches_brute_force(scene, thr, mode):
    targets, dets = scene
    got = [c.ap for c in dm.evaluate(targets, dets, ["a", "b"], iou_threshold=thr, mode=mode).classes]
    np.testing.assert_allclose(got, _brute_force(targets, dets, 2, thr, mode), atol=1e-9)


def _coco_101(precision, recall):
    """COCO's 101-point interpolation of our PR curve (pycocotools' accumulate, written out)."""
    pr = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([pr[i] if i < len(pr) else 0.0 for i in idx]))


def random_dataset(rng, n_images, dets_per_image, num_classes=3, size=640):
    """Disjoint ground-truth boxes (so VOC's and COCO's matching rules agree) and noisy detections."""
    targets, dets = [], []
    for _ in range(n_images):
        n = int(rng.integers(1, 9))
        cells = rng.choice(16, n, replace=False)  # one box per cell of a 4x4 grid: never overlapping
        cx, cy = (cells % 4) * size / 4, (cells // 4) * size / 4
        w, h = rng.uniform(20, size / 4 - 4, n), rng.uniform(20, size / 4 - 4, n)
        boxes = np.stack([cx + 2, cy + 2, cx + 2 + w, cy + 2 + h], axis=1)
        classes = rng.integers(0, num_classes, n)
        targets.append(dm.ImageTargets(boxes, classes))
        src = rng.integers(0, n, dets_per_image)
        d = boxes[src] + rng.normal(0, 8, (dets_per_image, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 2)
        wrong = rng.random(dets_per_image) < 0.2
        d_cls = np.where(wrong, rng.integers(0, num_classes, dets_per_image), classes[src])
        dets.append(dm.ImageDetections(d, d_cls, rng.random(dets_per_image)))
    return targets, dets


def coco_eval(targets, dets, num_classes, single_threshold=True):
    """pycocotools' per-class AP at IoU 0.5 (all areas, up to 100 detections per image) and its run time.

    ``single_threshold`` asks it for IoU 0.5 alone; otherwise it runs its usual ten thresholds
    0.5:0.95 (the bench times both). Also used by bench/bench_detection_metrics.py.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, (t, d) in enumerate(zip(targets, dets)):
        images.append({"id": i, "width": 640, "height": 640})
        for b, c in zip(t.boxes, t.classes):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [float(b[0]), float(b[1]), float(w), float(h)], "area": float(w * h)})
        for b, c, s in zip(d.boxes, d.classes, d.scores):
            results.append({"image_id": i, "category_id": int(c) + 1, "score": float(s),
                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        start = time.perf_counter()
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        if single_threshold:
            evaluator.params.iouThrs = np.array([0.5])
            evaluator.params.areaRng = [[0, 1e10]]
            evaluator.params.areaRngLbl = ["all"]
            evaluator.params.maxDets = [100]
        evaluator.evaluate()
        evaluator.accumulate()
        elapsed = time.perf_counter() - start
    iou50 = list(evaluator.params.iouThrs).index(0.5)
    # precision: (IoU thresholds, 101 recall thresholds, classes, area ranges, max-dets settings)
    precision = evaluator.eval["precision"][iou50, :, :, 0, len(evaluator.params.maxDets) - 1]
    return elapsed, [float(np.mean(precision[:, k])) for k in range(num_classes)]


def test_agrees_with_pycocotools_at_iou_05():
    pytest.importorskip("pycocotools")
    targets, dets = random_dataset(np.random.default_rng(0), 300, 20)
    ours = dm.evaluate(targets, dets, ["0", "1", "2"], mode="INTEGRATE", min_confidence=0.0)
    _, theirs = coco_eval(targets, dets, 3)
    for c, coco_ap in zip(ours.classes, theirs):
        # Same matches: our PR curve interpolated COCO's way gives COCO's number ...
        assert _coco_101(c.precision, c.recall) == pytest.approx(coco_ap, abs=1e-3)
        # ... and the exact area under the envelope differs only by their 101-point sampling.
        assert c.ap == pytest.approx(coco_ap, abs=0.01)


def test_kitti_predictions_evaluate_against_labels(tmp_path):
    """Inference output (16-field KITTI) read back and scored against the labels it came from."""
    from PIL import Image

    from taoctl.engine.data import kitti

    for sub in ("images", "labels", "pred"):
        (tmp_path / sub).mkdir()
    Image.new("RGB", (100, 100)).save(tmp_path / "images" / "a.png")
    truth = [kitti.KittiObject("car", (10.0, 10.0, 40.0, 40.0)), kitti.KittiObject("cyclist", (50.0, 50.0, 90.0, 95.0))]
    (tmp_path / "labels" / "a.txt").write_text("".join(o.to_line() + "\n" for o in truth))
    preds = [kitti.KittiObject("car", (11.0, 10.0, 40.0, 41.0), score=0.9),
             kitti.KittiObject("car", (60.0, 0.0, 70.0, 10.0), score=0.95),
             kitti.KittiObject("cyclist", (50.0, 50.0, 90.0, 95.0), score=0.8)]
    (tmp_path / "pred" / "a.txt").write_text("".join(o.to_line() + "\n" for o in preds))
    assert (tmp_path / "pred" / "a.txt").read_text().split("\n")[0].split()[-1] == "0.900000"
    gt, _ = kitti.read_kitti(tmp_path / "images", tmp_path / "labels")
    det, report = kitti.read_kitti(tmp_path / "images", tmp_path / "pred", with_score=True)
    assert report.clean and [o.score for o in det[0].objects] == [0.9, 0.95, 0.8]
    names = ["car", "cyclist"]
    result = dm.evaluate(dm.frames_to_targets(gt, names), dm.frames_to_detections(det, names), names)
    # car: FP at 0.95 then TP at 0.9 -> precision 1/2 at recall 1; cyclist: perfect.
    assert result.ap_by_class() == pytest.approx({"car": 0.5, "cyclist": 1.0})
    _, bad = kitti.read_kitti(tmp_path / "images", tmp_path / "labels", with_score=True)
    assert bad.counts() == {"field_count": 2}


def test_chunking_does_not_change_results(monkeypatch):
    targets, dets = random_dataset(np.random.default_rng(1), 40, 12)
    whole = dm.evaluate(targets, dets, ["0", "1", "2"], mode="INTEGRATE")
    monkeypatch.setattr(dm, "_PAIRS_PER_CHUNK", 7)  # a few detections per chunk
    chunked = dm.evaluate(targets, dets, ["0", "1", "2"], mode="INTEGRATE")
    assert chunked.ap_by_class() == whole.ap_by_class()
    for a, b in zip(whole.classes, chunked.classes):
        np.testing.assert_array_equal(a.precision, b.precision)
