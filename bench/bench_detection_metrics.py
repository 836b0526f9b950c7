"""Detection AP: taoctl's evaluator against pycocotools on the same 5,000 images x 50 detections.

Prints both timings, their ratio, and how far the per-class APs agree. Ours computes one IoU
threshold (0.5, TAO's default); pycocotools is asked for the same single threshold and area range,
and, as it is usually run, for its ten thresholds 0.5:0.95.
Run: .venv/bin/python bench/bench_detection_metrics.py [--images N] [--dets M]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_detection_metrics import _coco_101, random_dataset  # noqa: E402

from taoctl.engine.metrics import detection as dm  # noqa: E402


def coco_eval(targets, dets, num_classes, single_threshold):
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
    with contextlib.redirect_stdout(io.StringIO()):
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
    area_all = 0
    max_dets = len(evaluator.params.maxDets) - 1
    precision = evaluator.eval["precision"][iou50, :, :, area_all, max_dets]
    return elapsed, [float(np.mean(precision[:, k])) for k in range(num_classes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours and of single-IoU pycocotools (best kept)")
    args = parser.parse_args()
    targets, dets = random_dataset(np.random.default_rng(0), args.images, args.dets)
    names = ["0", "1", "2"]

    # Best of --repeat runs: the machine is shared, and the minimum is the least disturbed run.
    t_ours = t_one = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        ours = dm.evaluate(targets, dets, names, mode="INTEGRATE", min_confidence=0.0)
        t_ours = min(t_ours, time.perf_counter() - start)
        elapsed, coco_one = coco_eval(targets, dets, 3, single_threshold=True)
        t_one = min(t_one, elapsed)
    t_ten, _ = coco_eval(targets, dets, 3, single_threshold=False)

    print(f"{args.images} images x {args.dets} detections, {sum(len(t.classes) for t in targets)} boxes, 3 classes")
    print(f"best of {args.repeat} runs (the 10-IoU pycocotools run once)")
    print(f"taoctl evaluate (IoU 0.5):            {t_ours:8.3f} s")
    print(f"pycocotools (IoU 0.5 only, 1 area):   {t_one:8.3f} s   ratio {t_one / t_ours:6.1f}x")
    print(f"pycocotools (default 10 IoUs, 4 areas): {t_ten:6.3f} s   ratio {t_ten / t_ours:6.1f}x")
    worst_101 = max(abs(_coco_101(c.precision, c.recall) - a) for c, a in zip(ours.classes, coco_one))
    worst_int = max(abs(c.ap - a) for c, a in zip(ours.classes, coco_one))
    print(f"AP agreement with pycocotools: max |diff| {worst_101:.2e} on its 101-point interpolation, "
          f"{worst_int:.2e} against our INTEGRATE (exact area)")


if __name__ == "__main__":
    main()
