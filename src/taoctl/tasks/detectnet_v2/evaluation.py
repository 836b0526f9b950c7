"""DetectNet_v2's evaluator: one class for training's validation and the ``evaluate`` subtask.

It runs a predictor over cached images, clusters the coverage/bbox grids with the spec's
post-processing (``postprocess.py``) and scores them with the shared TAO-semantics AP
(``engine.metrics.detection``): per-class ``minimum_detection_ground_truth_overlap``,
``evaluation_box_config`` size filters applied to ground truth and detections alike, and
``average_precision_mode`` (SAMPLE: 11-point VOC2007, INTEGRATE: area under the envelope).
There is no confidence floor: TAO's DetectNet_v2 metrics take every clustered box.

It prints what TAO's evaluator prints: ``Validation cost``, ``Mean average_precision (in %)``,
the class / AP table and ``Median Inference Time`` (seconds per image: the median over batches of
the batch's time divided by its size, as TAO times it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from taoctl.engine.metrics import report_json
from taoctl.engine.metrics.detection import (BoxFilter, ClassResult, DetectionResult, ImageDetections,
                                             ImageTargets, evaluate)
from taoctl.engine.task import Evaluator
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic
from taoctl.tasks.detectnet_v2.postprocess import ClusterParams, cluster_batch

_AP_MODES = {0: "SAMPLE", 1: "INTEGRATE"}  # EvaluationConfig.AP_MODE


def evaluation_settings(evaluation_config, class_names: Sequence[str]) -> dict:
    """``evaluation_config`` -> DetectNetEvaluator's ``iou_thresholds``, ``box_filters`` and ``ap_mode``.

    As TAO, every class needs a ``minimum_detection_ground_truth_overlap``. A class without an
    ``evaluation_box_config`` is evaluated at every size, and an unset (0) maximum means no maximum
    (proto3 cannot tell it from "0", and a maximum of 0 would hide every box).
    """
    overlaps = {str(k).lower(): float(v) for k, v in evaluation_config.minimum_detection_ground_truth_overlap.items()}
    boxes = {str(k).lower(): v for k, v in evaluation_config.evaluation_box_config.items()}
    iou_thresholds, box_filters = {}, {}
    for name in class_names:
        if name.lower() not in overlaps:
            raise TaoctlError(f"evaluation_config.minimum_detection_ground_truth_overlap has no entry for class "
                              f"{name!r} (it has: {', '.join(sorted(overlaps)) or 'none'})")
        iou_thresholds[name] = overlaps[name.lower()]
        box = boxes.get(name.lower())
        if box is not None:
            box_filters[name] = BoxFilter(minimum_height=float(box.minimum_height),
                                          maximum_height=float(box.maximum_height or np.inf),
                                          minimum_width=float(box.minimum_width),
                                          maximum_width=float(box.maximum_width or np.inf))
    return {"iou_thresholds": iou_thresholds, "box_filters": box_filters or None,
            "ap_mode": _AP_MODES[evaluation_config.average_precision_mode]}


def _operating_point(result: ClassResult, confidence: float) -> tuple[float, float]:
    """Precision and recall over the detections at or above ``confidence`` (scores are descending)."""
    at = int(np.searchsorted(-result.scores, -confidence, side="right"))
    return (float(result.precision[at - 1]), float(result.recall[at - 1])) if at else (0.0, 0.0)


class DetectNetEvaluator(Evaluator):
    """AP of clustered DetectNet_v2 outputs over a fixed image set (see the module docstring)."""

    def __init__(self, images: np.ndarray, targets: list[ImageTargets], class_names: Sequence[str],
                 params: list[ClusterParams], *, batch_size: int, iou_thresholds: Mapping[str, float],
                 box_filters: Mapping[str, BoxFilter] | None, ap_mode: str,
                 cost: Callable[[list[np.ndarray], slice], float] | None = None, dataset: str = ""):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} ground-truth entries")
        if len(params) != len(class_names):
            raise ValueError(f"{len(class_names)} classes but {len(params)} clustering parameter sets")
        self.images, self.targets, self.class_names = images, targets, list(class_names)
        self.params, self.batch_size = params, max(int(batch_size), 1)
        self.iou_thresholds, self.box_filters, self.ap_mode = dict(iou_thresholds), box_filters, ap_mode
        self.cost, self.dataset = cost, dataset

    def run(self, predictor) -> dict:
        height, width = self.images.shape[2:]
        detections: list[ImageDetections] = []
        batch_seconds, image_seconds = [], []
        cost_total = 0.0
        cluster_seconds = 0.0
        for start in range(0, len(self.images), self.batch_size):
            batch = slice(start, min(start + self.batch_size, len(self.images)))
            began = time.perf_counter()
            outputs = predictor(self.images[batch])
            seconds = time.perf_counter() - began
            batch_seconds.append(seconds)
            image_seconds.append(seconds / (batch.stop - batch.start))
            if self.cost is not None:
                cost_total += float(self.cost(outputs, batch))
            began = time.perf_counter()
            for per_class in cluster_batch(outputs[0], outputs[1], self.params, (width, height)):
                detections.append(ImageDetections(
                    np.concatenate([boxes for boxes, _ in per_class]).reshape(-1, 4),
                    np.concatenate([np.full(len(s), k, np.int64) for k, (_, s) in enumerate(per_class)]),
                    np.concatenate([scores for _, scores in per_class])))
            cluster_seconds += time.perf_counter() - began
        result = evaluate(self.targets, detections, self.class_names, iou_threshold=self.iou_thresholds,
                          mode=self.ap_mode, min_confidence=0.0, box_filters=self.box_filters)
        count = len(self.images)
        report = {
            "mAP": result.mean_ap,
            "ap_mode": result.mode,
            "validation_cost": cost_total / count if self.cost is not None and count else None,
            "median_inference_time": statistics.median(image_seconds) if image_seconds else None,
            "median_batch_time": statistics.median(batch_seconds) if batch_seconds else None,
            "images_per_second": count / sum(batch_seconds) if sum(batch_seconds) > 0 else None,
            "clustering_seconds": cluster_seconds,
            "num_images": count,
            "batch_size": self.batch_size,
            "model": predictor.source,
            "dataset": self.dataset,
            "classes": {},
        }
        for class_result, params in zip(result.classes, self.params):
            precision, recall = _operating_point(class_result, params.confidence_threshold)
            report["classes"][class_result.name] = {
                "ap": class_result.ap, "num_ground_truth": class_result.num_ground_truth,
                "num_detections": class_result.num_detections, "iou_threshold": self.iou_thresholds.get(
                    class_result.name, 0.5),
                "operating_confidence": params.confidence_threshold, "precision": precision, "recall": recall,
                # The PR curve, for write()'s plot; results.json leaves it out.
                "curve": {"precision": class_result.precision.tolist(), "recall": class_result.recall.tolist(),
                          "scores": class_result.scores.tolist()}}
        return report

    def summary(self, report: dict) -> dict[str, float]:
        values = {"mAP": report["mAP"]}
        if report["validation_cost"] is not None:
            values["cost"] = report["validation_cost"]
        return values

    @staticmethod
    def _detection_result(report: dict) -> DetectionResult:
        classes = []
        for name, entry in report["classes"].items():
            curve = {key: np.asarray(values, dtype=np.float64) for key, values in entry["curve"].items()}
            classes.append(ClassResult(name, entry["ap"], entry["num_ground_truth"], entry["num_detections"],
                                       curve["precision"], curve["recall"], curve["scores"],
                                       entry["precision"], entry["recall"]))
        return DetectionResult(classes, report["ap_mode"], 0.0)

    def write(self, report: dict, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        result = self._detection_result(report)
        lines = [""]
        if report["validation_cost"] is not None:
            lines.append("Validation cost: %f" % report["validation_cost"])
        lines += [result.table(), ""]
        if report["median_inference_time"] is not None:
            lines.append("Median Inference Time: %f" % report["median_inference_time"])
        lines.append(f"({report['num_images']} images, {report['images_per_second'] or 0:.1f} images/s through the "
                     f"model, clustering {report['clustering_seconds']:.2f} s)")
        print("\n".join(lines), flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {key: value for key, value in report.items() if key != "classes"}
        summary["classes"] = {name: {key: value for key, value in entry.items() if key != "curve"}
                              for name, entry in report["classes"].items()}
        write_atomic(out_dir / "results.json", report_json(summary))
        result.plot_pr_curves(out_dir / "PR_curve.png")
        print(f"Wrote {out_dir / 'results.json'}, {out_dir / 'PR_curve.png'}", flush=True)
