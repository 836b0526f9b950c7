"""The AP evaluator of a detector whose post-processing yields per-image detections (YOLO, SSD, RetinaNet).

One class serves training's periodic validation and the ``evaluate`` subtask: it runs a predictor
over fixed images, hands the outputs to the task's ``postprocess`` (decode + NMS), and scores the
detections with the shared AP (``engine.metrics.detection``, TAO's matching) at one IoU
threshold (``eval_config.matching_iou_threshold``) in SAMPLE or INTEGRATE mode. It prints what
TAO's YOLO/SSD evaluate prints: one ``<class> AP <value>`` line per class and ``mAP``, between
rows of stars, and writes ``results.json`` (and ``PR_curve.png`` when asked).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from taoctl.engine.metrics import report_json
from taoctl.engine.metrics.detection import ClassResult, DetectionResult, ImageDetections, ImageTargets, evaluate
from taoctl.engine.task import Evaluator
from taoctl.fileio import write_atomic

AP_MODES = {0: "SAMPLE", 1: "INTEGRATE"}  # cv/common EvalConfig.AP_MODE


class DetectionEvaluator(Evaluator):
    def __init__(self, images: np.ndarray, targets: Sequence[ImageTargets], class_names: Sequence[str],
                 postprocess: Callable[[list[np.ndarray]], list[ImageDetections]], *, batch_size: int,
                 iou_threshold: float, ap_mode: str, dataset: str = "", pr_curve: bool = False):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} ground-truth entries")
        self.images, self.targets, self.class_names = images, list(targets), list(class_names)
        self.postprocess, self.batch_size = postprocess, max(int(batch_size), 1)
        self.iou_threshold, self.ap_mode, self.dataset, self.pr_curve = iou_threshold, ap_mode, dataset, pr_curve

    def run(self, predictor) -> dict:
        detections: list[ImageDetections] = []
        model_seconds = post_seconds = 0.0
        for start in range(0, len(self.images), self.batch_size):
            began = time.perf_counter()
            outputs = predictor(self.images[start:start + self.batch_size])
            middle = time.perf_counter()
            detections += self.postprocess(outputs)
            post_seconds += time.perf_counter() - middle
            model_seconds += middle - began
        result = evaluate(self.targets, detections, self.class_names, iou_threshold=self.iou_threshold,
                          mode=self.ap_mode, min_confidence=0.0)
        count = len(self.images)
        return {
            "mAP": result.mean_ap, "ap_mode": result.mode, "iou_threshold": self.iou_threshold,
            "num_images": count, "batch_size": self.batch_size, "model": predictor.source, "dataset": self.dataset,
            "images_per_second": count / model_seconds if model_seconds > 0 else None,
            "postprocess_seconds": post_seconds,
            "classes": {c.name: {"ap": c.ap, "num_ground_truth": c.num_ground_truth,
                                 "num_detections": c.num_detections,
                                 "curve": {"precision": c.precision.tolist(), "recall": c.recall.tolist(),
                                           "scores": c.scores.tolist()}} for c in result.classes},
        }

    def summary(self, report: dict) -> dict[str, float]:
        return {"mAP": report["mAP"]}

    @staticmethod
    def table(report: dict) -> str:
        """TAO's YOLO/SSD evaluate printout."""
        stars = "*" * 31
        lines = [stars] + [f"{name:<14}{'AP':<6}{round(entry['ap'], 5)}" for name, entry in report["classes"].items()]
        lines += [f"{'':<14}{'mAP':<6}{round(report['mAP'], 5)}", stars]
        return "\n".join(lines)

    def write(self, report: dict, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        speed = report["images_per_second"]
        print("\n".join(["Start to calculate AP for each class", self.table(report),
                         f"({report['num_images']} images of {report['dataset']}, {report['ap_mode']} AP at IoU "
                         f"{report['iou_threshold']:g}; {speed or 0:.1f} images/s through the model)"]), flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {key: value for key, value in report.items() if key != "classes"}
        summary["classes"] = {name: {k: v for k, v in entry.items() if k != "curve"}
                              for name, entry in report["classes"].items()}
        write_atomic(out_dir / "results.json", report_json(summary))
        written = [out_dir / "results.json"]
        if self.pr_curve:
            self._result(report).plot_pr_curves(out_dir / "PR_curve.png")
            written.append(out_dir / "PR_curve.png")
        print("Wrote " + ", ".join(str(p) for p in written), flush=True)

    @staticmethod
    def _result(report: dict) -> DetectionResult:
        classes = []
        for name, entry in report["classes"].items():
            curve = {key: np.asarray(values, dtype=np.float64) for key, values in entry["curve"].items()}
            classes.append(ClassResult(name, entry["ap"], entry["num_ground_truth"], entry["num_detections"],
                                       curve["precision"], curve["recall"], curve["scores"], 0.0, 0.0))
        return DetectionResult(classes, report["ap_mode"], 0.0)
