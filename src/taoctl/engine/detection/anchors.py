"""Anchor shapes: TAO's spec strings and k-means with the 1 - IoU distance (``kmeans`` subtasks).

TAO's YOLO specs write each scale's anchors as ``"[(w, h), (w, h), (w, h)]"`` in network-input
pixels (``small_anchor_shape`` for stride 8, ``mid_`` 16, ``big_`` 32). The k-means clusters box
(width, height) pairs, as if every box shared one centre, with distance 1 - IoU (YOLOv2's
"dimension clusters"): each box joins the centre it overlaps most, each centre moves to the mean
of its boxes, until no box changes centre or ``max_steps`` is reached.
"""

from __future__ import annotations

import ast

import numpy as np

from taoctl.errors import TaoctlError


def parse_anchor_shape(text: str, field: str) -> np.ndarray:
    """``"[(15.6, 13.88), (30.25, 20.25)]"`` -> float32 [[w, h], ...]; a bad string names ``field``."""
    try:
        value = ast.literal_eval(text.strip())
        anchors = np.array(value, dtype=np.float32).reshape(-1, 2)
        if len(anchors) != len(value):
            raise ValueError
    except (ValueError, SyntaxError, TypeError):
        raise TaoctlError(f"{field}: {text!r} is not a list of (width, height) pairs such as "
                          f"\"[(15.60, 13.88), (30.25, 20.25), (20.67, 49.63)]\"") from None
    if not len(anchors) or not np.all(np.isfinite(anchors)) or np.any(anchors <= 0):
        raise TaoctlError(f"{field}: {text!r}: every anchor width and height must be a positive number")
    return anchors


def format_anchor_shape(anchors: np.ndarray) -> str:
    """float [[w, h], ...] -> TAO's spec string ``"[(w, h), ...]"`` (two decimals)."""
    return "[" + ", ".join(f"({w:.2f}, {h:.2f})" for w, h in np.asarray(anchors, dtype=np.float64)) + "]"


def shape_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray) -> np.ndarray:
    """[N, K] IoU of (w, h) pairs placed on one centre."""
    boxes_wh, anchors_wh = np.asarray(boxes_wh, np.float64), np.asarray(anchors_wh, np.float64)
    inter = (np.minimum(boxes_wh[:, None, 0], anchors_wh[None, :, 0])
             * np.minimum(boxes_wh[:, None, 1], anchors_wh[None, :, 1]))
    union = boxes_wh[:, None].prod(-1) + anchors_wh[None].prod(-1) - inter
    return inter / np.maximum(union, 1e-12)


def kmeans_anchors(boxes_wh: np.ndarray, num_clusters: int, max_steps: int = 10000,
                   seed: int = 0) -> tuple[np.ndarray, float]:
    """(centres [K, 2] sorted by area, mean IoU of each box with its closest centre).

    The first centres are ``num_clusters`` distinct boxes drawn with ``seed``: the same boxes and
    seed give the same anchors.
    """
    boxes_wh = np.asarray(boxes_wh, dtype=np.float64).reshape(-1, 2)
    distinct = np.unique(boxes_wh, axis=0)
    if len(distinct) < num_clusters:
        raise TaoctlError(f"k-means needs at least {num_clusters} distinct box shapes (-n), the labels give "
                          f"{len(distinct)}")
    rng = np.random.default_rng(seed)
    centres = distinct[rng.choice(len(distinct), num_clusters, replace=False)]
    assigned = None
    for _ in range(max(int(max_steps), 1)):
        nearest = shape_iou(boxes_wh, centres).argmax(axis=1)
        if assigned is not None and np.array_equal(nearest, assigned):
            break
        assigned = nearest
        for k in range(num_clusters):
            members = boxes_wh[assigned == k]
            if len(members):  # an emptied centre stays where it was
                centres[k] = members.mean(axis=0)
    centres = centres[np.argsort(centres.prod(axis=1), kind="stable")]
    return centres.astype(np.float32), float(shape_iou(boxes_wh, centres).max(axis=1).mean())


def box_shapes(label_dirs, image_dirs, width: int, height: int, min_x: float = 0.0, min_y: float = 0.0,
               report=None) -> np.ndarray:
    """(w, h) [N, 2] of every labelled box of the KITTI folder pairs, each image stretched to width x height.

    Boxes not wider than ``min_x`` or not higher than ``min_y`` (network pixels) are left out, as TAO's
    ``kmeans --min_x/--min_y``. ``report``: a ``kitti.LabelReport`` collecting label defects.
    """
    from taoctl.engine.data import kitti

    if len(label_dirs) != len(image_dirs):
        raise TaoctlError(f"-l names {len(label_dirs)} label folder(s) but -i {len(image_dirs)} image folder(s); "
                          f"give one image folder per label folder")
    shapes = []
    for label_dir, image_dir in zip(label_dirs, image_dirs):
        frames, _ = kitti.read_kitti(image_dir, label_dir, lower=True, report=report)
        for frame in frames:
            boxes = frame.boxes
            sizes = (boxes[:, 2:] - boxes[:, :2]) * np.array([width / frame.width, height / frame.height],
                                                             dtype=np.float32)
            shapes.append(sizes[(sizes[:, 0] > min_x) & (sizes[:, 1] > min_y)])
    shapes = np.concatenate(shapes) if shapes else np.zeros((0, 2), np.float32)
    if not len(shapes):
        raise TaoctlError(f"no boxes in {', '.join(map(str, label_dirs))} "
                          f"(after --min_x {min_x:g} / --min_y {min_y:g})")
    return shapes
