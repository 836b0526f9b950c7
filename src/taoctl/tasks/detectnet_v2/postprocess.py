"""DetectNet_v2 post-processing: coverage/bbox grids -> per-class boxes, as TAO's clustering does it.

Every grid cell whose coverage exceeds ``coverage_threshold`` proposes one box (decoded from its
``output_bbox`` offsets, ``encoding.py``). The proposals of each class are then clustered
(TAO's ``postprocessor/cluster.py`` for evaluation, ``postprocessor/utilities.py`` for inference):

* ``DBSCAN``: scikit-learn's DBSCAN on the distance ``1 - IoU`` between proposals (TAO's "IOU"
  criterion, IoU regularised by 1e-5 in the denominator as TAO does), each proposal weighted by its
  coverage, so ``dbscan_min_samples`` is the *cumulative coverage* a core point's neighbourhood
  needs. A cluster's box is the coverage-weighted mean of its proposals and its confidence TAO's
  ``aggregate_cov``: the SUM of its proposals' coverages (so it may exceed 1). Clusters below
  ``dbscan_confidence_threshold`` are dropped; noise points give no box.
* ``NMS``: greedy hard NMS over the proposals (IoU > ``nms_iou_threshold`` suppresses), the
  confidence is the kept proposal's coverage; proposals not above ``nms_confidence_threshold``
  are dropped (TAO drops them after NMS; they can only suppress lower-scored ones, so dropping
  them first gives the same boxes).
* ``HYBRID``: DBSCAN first, then NMS over the proposals of the clusters DBSCAN kept.

A box whose height is not above ``minimum_bounding_box_height`` is dropped, for every algorithm
(TAO's NMS path ignores the field; DBSCAN applies it to the cluster's mean box). Boxes come back
clipped to the network input, highest confidence first. ``neighborhood_size`` is read for
completeness but, as in TAO, does nothing. ``confidence_config.confidence_threshold`` does not
filter here either (TAO applies it only with its unsupported confidence models): the evaluator
reports precision and recall at it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from taoctl.errors import TaoctlError
from taoctl.tasks.detectnet_v2.encoding import BBOX_NORM, cell_centres

ALGORITHMS = ("DBSCAN", "NMS", "HYBRID")
# NMS keeps greedy suppression cheap: at most this many highest-coverage proposals per class.
NMS_TOP_K = 300
# DBSCAN's pairwise distances grow as N^2: the highest-coverage proposals of a class it clusters
# (a 1920x1080 input has 8,040 cells; 2,048 float32 distances squared is 16 MiB).
DBSCAN_MAX_CANDIDATES = 2048
# TAO's inference defaults for clustering fields a bbox_handler_config leaves unset (bbox_handler.py).
_HANDLER_NMS_IOU_DEFAULT = 0.3
_HANDLER_NMS_CONFIDENCE_DEFAULT = 0.1
_ALGORITHM_NAMES = {0: "DBSCAN", 1: "NMS", 2: "HYBRID"}  # ClusteringConfig.ClusteringAlgorithm


@dataclasses.dataclass
class ClusterParams:
    """One class's ClusteringConfig, plus confidence_config.confidence_threshold (the reporting point)."""

    algorithm: str  # "DBSCAN" | "NMS" | "HYBRID"
    coverage_threshold: float
    minimum_bounding_box_height: float
    dbscan_eps: float
    dbscan_min_samples: int
    neighborhood_size: int
    dbscan_confidence_threshold: float
    nms_iou_threshold: float
    nms_confidence_threshold: float
    confidence_threshold: float = 0.0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise TaoctlError(f"clustering_algorithm {self.algorithm!r}; use one of {', '.join(ALGORITHMS)}")


def _from_clustering(config, confidence_threshold: float) -> ClusterParams:
    return ClusterParams(
        algorithm=_ALGORITHM_NAMES[config.clustering_algorithm],
        coverage_threshold=float(config.coverage_threshold),
        minimum_bounding_box_height=float(config.minimum_bounding_box_height),
        dbscan_eps=float(config.dbscan_eps),
        dbscan_min_samples=int(config.dbscan_min_samples),
        neighborhood_size=int(config.neighborhood_size),
        dbscan_confidence_threshold=float(config.dbscan_confidence_threshold),
        nms_iou_threshold=float(config.nms_iou_threshold),
        nms_confidence_threshold=float(config.nms_confidence_threshold),
        confidence_threshold=float(confidence_threshold))


def _by_lower_key(entries) -> dict:
    return {str(key).lower(): value for key, value in entries.items()}


def params_from_postprocessing(postprocessing_config, class_names: Sequence[str]) -> list[ClusterParams]:
    """The experiment spec's ``postprocessing_config``, one ClusterParams per class in ``class_names`` order."""
    entries = _by_lower_key(postprocessing_config.target_class_config)
    params = []
    for name in class_names:
        entry = entries.get(name.lower())
        if entry is None:
            raise TaoctlError(f"postprocessing_config.target_class_config has no entry for class {name!r} "
                              f"(it has: {', '.join(sorted(entries)) or 'none'})")
        params.append(_from_clustering(entry.clustering_config, entry.confidence_config.confidence_threshold))
    return params


def params_from_bbox_handler(bbox_handler_config, class_names: Sequence[str]) -> list[ClusterParams]:
    """The inference spec's ``bbox_handler_config.classwise_bbox_handler_config`` per class.

    As TAO's BboxHandler: a class without an entry uses the ``default`` entry; unset
    ``nms_iou_threshold`` / ``nms_confidence_threshold`` mean 0.3 / 0.1.
    """
    field = "bbox_handler_config.classwise_bbox_handler_config"
    entries = _by_lower_key(bbox_handler_config.classwise_bbox_handler_config)
    params = []
    for name in class_names:
        key = name.lower() if name.lower() in entries else "default"
        entry = entries.get(key)
        if entry is None:
            raise TaoctlError(f"{field} has no entry for class {name!r} and no \"default\" entry "
                              f"(it has: {', '.join(sorted(entries)) or 'none'})")
        if entry.confidence_model not in ("", "aggregate_cov"):
            raise TaoctlError(f"{field}[{key}].confidence_model: {entry.confidence_model!r} is not supported; "
                              "taoctl computes aggregate_cov (a cluster's summed coverage)")
        one = _from_clustering(entry.clustering_config, 0.0)
        one.nms_iou_threshold = one.nms_iou_threshold or _HANDLER_NMS_IOU_DEFAULT
        one.nms_confidence_threshold = one.nms_confidence_threshold or _HANDLER_NMS_CONFIDENCE_DEFAULT
        params.append(one)
    return params


def decode(cov: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cov`` [C, Hg, Wg], ``bbox`` [4C, Hg, Wg] -> boxes [C, Hg, Wg, 4] (x1 y1 x2 y2 in input pixels)
    and scores [C, Hg, Wg] (the coverage)."""
    cov = np.asarray(cov, dtype=np.float32)
    bbox = np.asarray(bbox, dtype=np.float32)
    if cov.ndim != 3 or bbox.shape != (4 * cov.shape[0], *cov.shape[1:]):
        raise TaoctlError(f"model outputs of shapes {tuple(cov.shape)} (coverage) and {tuple(bbox.shape)} (bbox) "
                          "do not match: expected C x Hg x Wg and 4C x Hg x Wg")
    num_classes, grid_h, grid_w = cov.shape
    cx, cy = cell_centres(grid_h, grid_w)
    offsets = bbox.reshape(num_classes, 4, grid_h, grid_w) * np.float32(BBOX_NORM)
    boxes = np.stack([cx[None, None, :] - offsets[:, 0], cy[None, :, None] - offsets[:, 1],
                      cx[None, None, :] + offsets[:, 2], cy[None, :, None] + offsets[:, 3]], axis=-1)
    return boxes, cov


def _pairwise_iou(boxes: np.ndarray, regulariser: float = 0.0) -> np.ndarray:
    """IoU of every pair of boxes (N, 4), float32 and in place (the clustering's main cost); ``regulariser`` is
    added to the union (TAO's DBSCAN uses 1e-5). An empty union (degenerate boxes) gives 0."""
    x1, y1, x2, y2 = np.asarray(boxes, dtype=np.float32).T
    inter = np.minimum(x2[:, None], x2[None, :])
    inter -= np.maximum(x1[:, None], x1[None, :])
    np.maximum(inter, 0, out=inter)
    height = np.minimum(y2[:, None], y2[None, :])
    height -= np.maximum(y1[:, None], y1[None, :])
    np.maximum(height, 0, out=height)
    inter *= height
    area = (x2 - x1) * (y2 - y1)
    union = area[:, None] + area[None, :]
    union -= inter
    union += np.float32(regulariser)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores, highest first (ties in input order)."""
    return np.argsort(-scores, kind="stable")[:count]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy hard NMS: indices kept, highest score first; IoU above ``iou_threshold`` suppresses.

    One IoU matrix for the (top-k capped) candidates; the loop visits each candidate once and only
    kept ones do work (a row OR), so a class's NMS is a few hundred cheap numpy steps at most.
    """
    order = _top(scores, NMS_TOP_K)
    overlaps = _pairwise_iou(boxes[order]) > iou_threshold
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= overlaps[i]
    return order[np.asarray(kept, dtype=np.int64)]


def _dbscan(boxes: np.ndarray, scores: np.ndarray, params: ClusterParams):
    """DBSCAN clusters: (mean boxes [K, 4], aggregate confidences [K], cluster label of each proposal)."""
    from sklearn.cluster import DBSCAN

    # sklearn needs eps > 0; TAO's inference path adds the same 1e-12.
    db = DBSCAN(eps=params.dbscan_eps + 1e-12, min_samples=max(params.dbscan_min_samples, 1), metric="precomputed")
    labels = db.fit_predict(1.0 - _pairwise_iou(boxes, 1e-5), sample_weight=scores)
    member = labels >= 0
    if not member.any():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), labels
    count = int(labels.max()) + 1
    weight = np.bincount(labels[member], weights=scores[member], minlength=count)
    mean_boxes = np.stack([np.bincount(labels[member], weights=scores[member] * boxes[member, j], minlength=count)
                           for j in range(4)], axis=1) / weight[:, None]
    return mean_boxes.astype(np.float32), weight.astype(np.float32), labels


def _cluster_class(boxes: np.ndarray, scores: np.ndarray, params: ClusterParams) -> tuple[np.ndarray, np.ndarray]:
    """One class of one image: proposals [N, 4] with coverages [N] -> (boxes, confidences), unclipped."""
    candidates = np.nonzero(scores > params.coverage_threshold)[0]
    boxes, scores = boxes[candidates], scores[candidates]
    if params.algorithm == "NMS":
        above = scores > params.nms_confidence_threshold
        boxes, scores = boxes[above], scores[above]
        keep = nms(boxes, scores, params.nms_iou_threshold)
        return boxes[keep], scores[keep]
    top = _top(scores, DBSCAN_MAX_CANDIDATES)
    boxes, scores = boxes[top], scores[top]
    if not len(scores):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    mean_boxes, confidences, labels = _dbscan(boxes, scores, params)
    tall = mean_boxes[:, 3] - mean_boxes[:, 1] > params.minimum_bounding_box_height
    kept = np.nonzero(tall & (confidences >= params.dbscan_confidence_threshold))[0]
    if params.algorithm == "DBSCAN":
        return mean_boxes[kept], confidences[kept]
    # HYBRID: NMS over the proposals of the clusters DBSCAN kept.
    members = np.isin(labels, kept) & (scores > params.nms_confidence_threshold)
    boxes, scores = boxes[members], scores[members]
    keep = nms(boxes, scores, params.nms_iou_threshold)
    return boxes[keep], scores[keep]


def cluster(cov: np.ndarray, bbox: np.ndarray, params: Sequence[ClusterParams],
            image_size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One image's outputs -> per class (boxes [N, 4] x1 y1 x2 y2 clipped to ``image_size`` (width, height),
    confidences [N]), highest confidence first."""
    boxes, scores = decode(cov, bbox)
    if len(params) != len(scores):
        raise TaoctlError(f"the model predicts {len(scores)} classes but the spec's clustering has {len(params)}")
    width, height = image_size
    limits = np.array([width, height, width, height], dtype=np.float32)
    out = []
    for k, class_params in enumerate(params):
        found, confidences = _cluster_class(boxes[k].reshape(-1, 4), scores[k].ravel(), class_params)
        heights = found[:, 3] - found[:, 1]
        found = np.clip(found, 0, limits)
        # Height is judged on the box as clustered (TAO); one wholly outside the image is no detection.
        keep = (heights > class_params.minimum_bounding_box_height) & \
               (found[:, 2] > found[:, 0]) & (found[:, 3] > found[:, 1])
        found, confidences = found[keep], confidences[keep]
        order = np.argsort(-confidences, kind="stable")
        out.append((found[order].astype(np.float32), confidences[order].astype(np.float32)))
    return out


def cluster_batch(cov: np.ndarray, bbox: np.ndarray, params: Sequence[ClusterParams],
                  image_size: tuple[int, int]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``cov`` [N, C, Hg, Wg], ``bbox`` [N, 4C, Hg, Wg] -> per image, per class (boxes, confidences)."""
    return [cluster(c, b, params, image_size) for c, b in zip(np.asarray(cov), np.asarray(bbox))]
