"""Detection metrics every detector shares: per-class AP with TAO's semantics, mAP, PR curves.

Matching follows TAO's AP evaluator (the VOC rule): detections of a class are taken in
descending confidence; each is compared with the ground-truth box of that class in its image it
overlaps most; it is a true positive when that IoU >= the class's matching threshold and the box
is not yet matched, a false positive otherwise, and neither when the box is "difficult" (or
outside ``evaluation_box_config``'s size range). Because the best-overlapping box does not depend
on what was matched before, the whole evaluation vectorizes: one IoU per (detection, box of the
same image and class) pair, then one sort and "first detection to claim each box wins".

AP modes: ``SAMPLE`` (VOC2007 11-point: mean over t in 0, 0.1 … 1 of the maximum precision at
recall >= t) and ``INTEGRATE`` (VOC2010+: area under the monotone precision envelope).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

from taoctl.engine.metrics import report_json
from taoctl.fileio import atomic_path, write_atomic

MODES = ("SAMPLE", "INTEGRATE")


@dataclasses.dataclass
class ImageTargets:
    """Ground truth of one image: boxes (N, 4) x1 y1 x2 y2, class indices (N,), optional difficult flags."""

    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray | None = None


@dataclasses.dataclass
class ImageDetections:
    """Detections of one image: boxes (M, 4), class indices (M,), confidences (M,)."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


@dataclasses.dataclass
class BoxFilter:
    """evaluation_box_config for one class: boxes outside these pixel sizes are not evaluated."""

    minimum_height: float = 0.0
    maximum_height: float = float("inf")
    minimum_width: float = 0.0
    maximum_width: float = float("inf")

    def keep(self, boxes: np.ndarray) -> np.ndarray:
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return (h >= self.minimum_height) & (h <= self.maximum_height) & \
               (w >= self.minimum_width) & (w <= self.maximum_width)


@dataclasses.dataclass
class ClassResult:
    name: str
    ap: float
    num_ground_truth: int
    num_detections: int
    precision: np.ndarray  # PR curve over detections in descending confidence
    recall: np.ndarray
    scores: np.ndarray  # confidence of each point of the curve
    operating_precision: float
    operating_recall: float


@dataclasses.dataclass
class DetectionResult:
    classes: list[ClassResult]
    mode: str
    operating_confidence: float

    @property
    def mean_ap(self) -> float:
        """Mean over classes that have ground truth (a class never labelled has no defined AP)."""
        aps = [c.ap for c in self.classes if c.num_ground_truth > 0]
        return float(np.mean(aps)) if aps else 0.0

    def ap_by_class(self) -> dict[str, float]:
        return {c.name: c.ap for c in self.classes}

    def to_json_dict(self) -> dict:
        """``results.json``: ``AP_<class>`` (0-1) per class, ``mAP``, and the operating point."""
        out = {f"AP_{c.name}": round(c.ap, 6) for c in self.classes}
        out["mAP"] = round(self.mean_ap, 6)
        out["ap_mode"] = self.mode
        out["operating_confidence"] = self.operating_confidence
        for c in self.classes:
            out[f"precision_{c.name}"] = round(c.operating_precision, 6)
            out[f"recall_{c.name}"] = round(c.operating_recall, 6)
        return out

    def table(self) -> str:
        """TAO's evaluate printout: mean AP and a class / AP (in %) table."""
        lines = [f"Mean average_precision (in %): {100 * self.mean_ap:.4f}", "",
                 f"{'class name':<24}{'average precision (in %)':>26}",
                 "-" * 50]
        lines += [f"{c.name:<24}{100 * c.ap:>26.4f}" for c in self.classes]
        return "\n".join(lines)

    def write_json(self, path: str | os.PathLike) -> None:
        write_atomic(path, report_json(self.to_json_dict()))

    def plot_pr_curves(self, path: str | os.PathLike) -> None:
        """One PR curve per class in a PNG (``PR_curve.png``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
        for c in self.classes:
            if c.recall.size:
                ax.plot(c.recall, c.precision, label=f"{c.name} (AP {100 * c.ap:.1f})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        ax.set_title(f"Precision-recall ({self.mode}), mAP {100 * self.mean_ap:.2f}%")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4); continuous coordinates, no +1."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(precision: np.ndarray, recall: np.ndarray, mode: str = "SAMPLE") -> float:
    """AP of a PR curve (points in descending confidence) by TAO's ``SAMPLE`` or ``INTEGRATE`` rule."""
    if mode not in MODES:
        raise ValueError(f"AP mode {mode!r}; use one of {MODES}")
    if recall.size == 0:
        return 0.0
    if mode == "SAMPLE":
        total = 0.0
        # Thresholds exactly as TAO's evaluator makes them (linspace: 0.30000000000000004 and all).
        for t in np.linspace(0, 1, 11):
            reached = precision[recall >= t]
            total += reached.max() if reached.size else 0.0
        return float(total / 11)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _concat_targets(targets: Sequence[ImageTargets]):
    boxes = [np.asarray(t.boxes, dtype=np.float64).reshape(-1, 4) for t in targets]
    classes = [np.asarray(t.classes, dtype=np.int64).reshape(-1) for t in targets]
    ignore = [np.zeros(len(c), bool) if t.difficult is None else np.asarray(t.difficult, dtype=bool).reshape(-1)
              for t, c in zip(targets, classes)]
    per_image = np.array([len(c) for c in classes], dtype=np.int64)
    if not targets:
        return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool), per_image
    return np.concatenate(boxes), np.concatenate(classes), np.concatenate(ignore), per_image


def _concat_detections(detections: Sequence[ImageDetections]):
    boxes = [np.asarray(d.boxes, dtype=np.float64).reshape(-1, 4) for d in detections]
    classes = [np.asarray(d.classes, dtype=np.int64).reshape(-1) for d in detections]
    scores = [np.asarray(d.scores, dtype=np.float64).reshape(-1) for d in detections]
    if not detections:
        return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    image = np.repeat(np.arange(len(detections)), [len(c) for c in classes])
    return np.concatenate(boxes), np.concatenate(classes), np.concatenate(scores), image


_PAIRS_PER_CHUNK = 4_000_000  # bounds memory: (detection, box) pairs handled at once


def _best_matches(d_boxes, d_cls, d_image, g_boxes, g_cls, g_image, num_images, num_classes):
    """For every detection, the box of its image and class it overlaps most (first on ties) and that IoU.

    Boxes are grouped by (image, class) so each detection meets only the boxes it may match; all
    those (detection, box) pairs are handled at once, in chunks of detections. A detection without
    a box of its class gets IoU -1 and box 0 (never a hit). ``g_*`` must be sorted by
    (image, class), keeping the input order within a group.
    """
    groups = np.bincount(g_image * num_classes + g_cls, minlength=num_images * num_classes)
    group_start = np.concatenate(([0], np.cumsum(groups)))
    key = d_image * num_classes + d_cls
    n_pairs = groups[key]
    best_gt = np.zeros(len(d_cls), dtype=np.int64)
    best_iou = np.full(len(d_cls), -1.0)
    bounds = np.concatenate(([0], np.cumsum(n_pairs)))
    first = 0
    while first < len(d_cls):
        last = max(int(np.searchsorted(bounds, bounds[first] + _PAIRS_PER_CHUNK, side="right")) - 1, first + 1)
        counts = n_pairs[first:last]
        total = int(counts.sum())
        if total:
            seg_start = np.cumsum(counts) - counts
            det = np.repeat(np.arange(first, last), counts)
            gt = group_start[key[det]] + np.arange(total) - np.repeat(seg_start, counts)
            a, b = d_boxes[det], g_boxes[gt]
            w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
            h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
            inter = np.maximum(w, 0) * np.maximum(h, 0)
            union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
            # Pairs are grouped by detection: the segment maximum, then its first position.
            has = counts > 0
            seg_max = np.maximum.reduceat(iou, seg_start[has])
            at_max = np.nonzero(iou == np.repeat(seg_max, counts[has]))[0]
            owner = det[at_max]
            first_of_owner = np.concatenate(([True], owner[1:] != owner[:-1]))
            best_gt[owner[first_of_owner]] = gt[at_max[first_of_owner]]
            best_iou[np.arange(first, last)[has]] = seg_max
        first = last
    return best_gt, best_iou


def evaluate(targets: Sequence[ImageTargets], detections: Sequence[ImageDetections], class_names: Sequence[str],
             iou_threshold: float | Mapping[str, float] = 0.5, mode: str = "SAMPLE", min_confidence: float = 0.01,
             box_filters: Mapping[str, BoxFilter] | None = None,
             operating_confidence: float = 0.5) -> DetectionResult:
    """Per-class AP over a dataset; ``targets[i]`` and ``detections[i]`` describe the same image.

    ``iou_threshold``: one value, or per class name (detectnet_v2's ``minimum_overlap``; classes
    not named use 0.5). Detections below ``min_confidence`` are ignored (TAO's floor, 0.01).
    ``operating_confidence``: the confidence at which precision and recall are reported.
    """
    if len(targets) != len(detections):
        raise ValueError(f"{len(targets)} images of ground truth but {len(detections)} of detections")
    mode = mode.upper()
    if mode not in MODES:
        raise ValueError(f"AP mode {mode!r}; use one of {MODES}")
    num_classes = len(class_names)
    thresholds = np.array([iou_threshold.get(n, 0.5) if isinstance(iou_threshold, Mapping) else iou_threshold
                           for n in class_names], dtype=np.float64)
    filters = [box_filters.get(n) if box_filters else None for n in class_names]

    g_boxes, g_cls, g_ignore, g_per_image = _concat_targets(targets)
    d_boxes, d_cls, d_score, d_image = _concat_detections(detections)
    for what, classes in (("ground truth", g_cls), ("detection", d_cls)):
        if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"{what} class index outside 0..{num_classes - 1}")
    g_image = np.repeat(np.arange(len(targets)), g_per_image)
    # Boxes grouped by (image, class), input order kept within a group (stable sort).
    by_group = np.argsort(g_image * num_classes + g_cls, kind="stable")
    g_boxes, g_cls, g_ignore, g_image = g_boxes[by_group], g_cls[by_group], g_ignore[by_group], g_image[by_group]
    keep = d_score >= min_confidence
    for k, box_filter in enumerate(filters):
        if box_filter is not None:
            g_ignore |= (g_cls == k) & ~box_filter.keep(g_boxes)
            keep &= ~((d_cls == k) & ~box_filter.keep(d_boxes))
    d_boxes, d_cls, d_score, d_image = d_boxes[keep], d_cls[keep], d_score[keep], d_image[keep]
    gt_counts = np.bincount(g_cls[~g_ignore], minlength=num_classes)
    # Each detection's best-overlapping box of its class in its image (global index), and that IoU.
    best_gt, best_iou = _best_matches(d_boxes, d_cls, d_image, g_boxes, g_cls, g_image, len(targets), num_classes)
    hit = best_iou >= thresholds[d_cls]
    # Matched a difficult box: neither TP nor FP.
    d_ignored = hit & g_ignore[best_gt] if len(g_ignore) else np.zeros(len(hit), dtype=bool)
    d_claim = np.where(hit & ~d_ignored, best_gt, -1)

    # Descending confidence; ties keep input order (image order, then detection order), as a stable sort does.
    order = np.argsort(-d_score, kind="stable")
    d_cls, d_score, d_claim, d_ignored = d_cls[order], d_score[order], d_claim[order], d_ignored[order]
    is_tp = np.zeros(len(order), dtype=bool)
    claimed = d_claim >= 0
    if claimed.any():
        positions = np.nonzero(claimed)[0]
        _, first = np.unique(d_claim[positions], return_index=True)  # first claimant of each box wins
        is_tp[positions[first]] = True

    results = []
    for k, name in enumerate(class_names):
        mine = (d_cls == k) & ~d_ignored
        tp = is_tp[mine]
        scores = d_score[mine]
        tp_cum = np.cumsum(tp)
        fp_cum = np.cumsum(~tp)
        n_gt = int(gt_counts[k])
        recall = tp_cum / n_gt if n_gt else np.zeros(len(tp))
        precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
        ap = average_precision(precision, recall, mode) if n_gt else 0.0
        at = np.searchsorted(-scores, -operating_confidence, side="right")  # detections >= operating conf
        op_precision = float(precision[at - 1]) if at else 0.0
        op_recall = float(recall[at - 1]) if at else 0.0
        results.append(ClassResult(name, ap, n_gt, int(mine.sum()), precision, recall, scores,
                                   op_precision, op_recall))
    return DetectionResult(results, mode, operating_confidence)


def frames_to_targets(frames, class_names: Sequence[str], difficult_occlusion: int | None = None) -> list[ImageTargets]:
    """ImageTargets from ``taoctl.engine.data.kitti.Frame`` objects; other classes are left out.

    ``difficult_occlusion``: objects with KITTI occlusion >= this are "difficult" (not evaluated).
    """
    index = {n: i for i, n in enumerate(class_names)}
    out = []
    for frame in frames:
        objs = [o for o in frame.objects if o.cls in index]
        boxes = np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4)
        classes = np.array([index[o.cls] for o in objs], dtype=np.int64)
        difficult = None
        if difficult_occlusion is not None:
            difficult = np.array([o.occlusion >= difficult_occlusion for o in objs], dtype=bool)
        out.append(ImageTargets(boxes, classes, difficult))
    return out


def frames_to_detections(frames, class_names: Sequence[str]) -> list[ImageDetections]:
    """ImageDetections from Frames whose objects carry a ``score`` (KITTI inference output)."""
    index = {n: i for i, n in enumerate(class_names)}
    out = []
    for frame in frames:
        objs = [o for o in frame.objects if o.cls in index]
        out.append(ImageDetections(np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4),
                                   np.array([index[o.cls] for o in objs], dtype=np.int64),
                                   np.array([1.0 if o.score is None else o.score for o in objs], dtype=np.float64)))
    return out
