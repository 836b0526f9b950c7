"""YOLO heads' arithmetic, shared by the YOLO family: targets, TAO's YOLOv3 loss, decoding, NMS.

A head at stride ``s`` with ``A`` anchors outputs ``[B, A * (5 + C), H, W]``; per anchor the
channels are ``tx, ty, tw, th, objectness, class_1 .. class_C`` (logits). Decoding, as YOLOv3:
centre = (cell + sigmoid(t_xy)) * s, size = anchor * exp(t_wh), score = sigmoid(obj) * sigmoid(cls).

Targets: each ground-truth box goes to the ONE anchor (of all scales) whose shape overlaps it most
(IoU of the two shapes on one centre), in the cell holding its centre at that anchor's scale;
two boxes landing on the same anchor and cell keep the later one.

Loss, TAO's ``YOLOv3Loss`` (nvidia_tao_tf1/cv/yolo_v3/losses): on positives a squared error on
(sigmoid(t_xy) vs the centre's offset in its cell, t_wh vs log(box / anchor) clipped to 1e-2..1e2),
weighted by 2 - (box area / image area) so small boxes count more; binary cross-entropy on
objectness and on each class. Anchors that are not positive but whose decoded box overlaps a
ground truth by ``ignore_iou`` or more (``matching_neutral_box_iou``) are neutral: no objectness
loss. Sums are divided by the positive count (location, positive objectness, classes) or the
negative count (negative objectness), then weighted by ``loss_loc_weight``,
``loss_class_weights`` and ``loss_neg_obj_weights``.

NMS (``nms_config``) is ``engine.detection.nms``'s (re-exported here): candidates are (box, class)
pairs whose score exceeds ``confidence_threshold``; per class greedy NMS at
``clustering_iou_threshold``; the ``top_k`` best survivors of all classes are kept; in an exported
graph it is TAO's BatchedNMS outputs (``nms.BatchedNMS``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taoctl.engine.detection.nms import MAX_NMS_CANDIDATES, greedy_nms, nms  # noqa: F401  (NMS lives in nms.py)

# Decoded sizes are capped at this many times their anchor: an untrained head's exp(t) overflows otherwise.
MAX_ANCHOR_SCALE = 1000.0
# TAO's target clip of box / anchor (its comment: "very very badly chosen" anchors beyond it).
TARGET_SCALE_RANGE = (1e-2, 1e2)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """TAO's yolov3_config loss fields; proto3's 0 (unset) takes TAO's YOLOv3Loss defaults."""

    loc: float = 5.0
    neg_obj: float = 50.0
    cls: float = 1.0
    ignore_iou: float = 0.7

    @classmethod
    def from_config(cls, loc: float, neg_obj: float, class_weight: float, ignore_iou: float) -> "LossWeights":
        default = cls()
        return cls(loc or default.loc, neg_obj or default.neg_obj, class_weight or default.cls,
                   ignore_iou or default.ignore_iou)


class YoloDecode(nn.Module):
    """Raw head outputs (one per stride) -> boxes [B, N, 4] (x1 y1 x2 y2, input pixels), scores [B, N, C].

    N runs over levels, then anchors, then rows, then columns. This is the exported graph's tail.
    """

    def __init__(self, anchors: Sequence[np.ndarray], strides: Sequence[int], num_classes: int):
        super().__init__()
        if len(anchors) != len(strides):
            raise ValueError(f"{len(anchors)} anchor sets for {len(strides)} strides")
        self.strides = tuple(int(s) for s in strides)
        self.num_classes = int(num_classes)
        for i, level in enumerate(anchors):
            self.register_buffer(f"anchors_{i}", torch.as_tensor(np.asarray(level, np.float32)).reshape(-1, 2),
                                 persistent=False)

    def level_anchors(self, i: int) -> torch.Tensor:
        return getattr(self, f"anchors_{i}")

    def split(self, raw: torch.Tensor, i: int):
        """One level: (t [B, A, H, W, 4], objectness logits [B, A, H, W], class logits [B, A, H, W, C])."""
        batch, _, height, width = raw.shape
        anchors = self.level_anchors(i)
        per_anchor = raw.reshape(batch, anchors.shape[0], 5 + self.num_classes, height, width).permute(0, 1, 3, 4, 2)
        return per_anchor[..., :4], per_anchor[..., 4], per_anchor[..., 5:]

    def boxes(self, t: torch.Tensor, i: int) -> torch.Tensor:
        """A level's t [B, A, H, W, 4] -> x1 y1 x2 y2 [B, A, H, W, 4] in input pixels."""
        _, _, height, width, _ = t.shape
        stride = self.strides[i]
        ys = torch.arange(height, dtype=t.dtype, device=t.device).view(1, 1, height, 1)
        xs = torch.arange(width, dtype=t.dtype, device=t.device).view(1, 1, 1, width)
        centre_x = (xs + torch.sigmoid(t[..., 0])) * stride
        centre_y = (ys + torch.sigmoid(t[..., 1])) * stride
        anchors = self.level_anchors(i).to(t.dtype)
        scale = torch.exp(torch.clamp(t[..., 2:4], max=math.log(MAX_ANCHOR_SCALE)))
        half_w = 0.5 * scale[..., 0] * anchors[:, 0].view(1, -1, 1, 1)
        half_h = 0.5 * scale[..., 1] * anchors[:, 1].view(1, -1, 1, 1)
        return torch.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], dim=-1)

    def forward(self, raws: Sequence[torch.Tensor]):
        all_boxes, all_scores = [], []
        for i, raw in enumerate(raws):
            t, obj, cls = self.split(raw, i)
            batch = raw.shape[0]
            all_boxes.append(self.boxes(t, i).reshape(batch, -1, 4))
            all_scores.append((torch.sigmoid(obj).unsqueeze(-1) * torch.sigmoid(cls)).reshape(batch, -1,
                                                                                            self.num_classes))
        return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)


@dataclasses.dataclass
class LevelTargets:
    """One level's targets: ``positive`` [B, A, H, W]; at positives the box's centre offset in its cell
    (``offset`` [B, A, H, W, 2], 0..1), size in pixels (``size`` [..., 2]) and class (``cls`` [B, A, H, W])."""

    positive: torch.Tensor
    offset: torch.Tensor
    size: torch.Tensor
    cls: torch.Tensor


def assign_targets(boxes: Sequence[torch.Tensor], classes: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                   strides: Sequence[int], grid_sizes: Sequence[tuple[int, int]]) -> list[LevelTargets]:
    """Each box (x1 y1 x2 y2 input pixels) on its best-shaped anchor of all levels, in its centre's cell."""
    device = anchors[0].device
    batch = len(boxes)
    per_level = [a.shape[0] for a in anchors]
    all_anchors = torch.cat(list(anchors))
    level_of = torch.repeat_interleave(torch.arange(len(anchors), device=device),
                                       torch.tensor(per_level, device=device))
    index_in_level = torch.cat([torch.arange(n, device=device) for n in per_level])
    image = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)])
    flat_boxes = torch.cat([b.reshape(-1, 4).to(device, torch.float32) for b in boxes])
    flat_classes = torch.cat([c.reshape(-1).to(device, torch.long) for c in classes])
    size = (flat_boxes[:, 2:] - flat_boxes[:, :2]).clamp(min=1e-3)
    centre = 0.5 * (flat_boxes[:, :2] + flat_boxes[:, 2:])
    inter = torch.minimum(size[:, None, :], all_anchors[None]).prod(-1)
    shape_iou = inter / (size.prod(-1)[:, None] + all_anchors.prod(-1)[None] - inter)
    best = shape_iou.argmax(dim=1)
    targets = []
    for level, (stride, (height, width)) in enumerate(zip(strides, grid_sizes)):
        count = per_level[level]
        positive = torch.zeros(batch, count, height, width, dtype=torch.bool, device=device)
        offset = torch.zeros(batch, count, height, width, 2, device=device)
        box_size = torch.ones(batch, count, height, width, 2, device=device)
        cls = torch.zeros(batch, count, height, width, dtype=torch.long, device=device)
        mine = level_of[best] == level
        if mine.any():
            grid = centre[mine] / stride
            col = grid[:, 0].floor().long().clamp(0, width - 1)
            row = grid[:, 1].floor().long().clamp(0, height - 1)
            where = (image[mine], index_in_level[best[mine]], row, col)
            positive[where] = True
            offset[where] = (grid - torch.stack([col, row], dim=1).float()).clamp(0.0, 1.0)
            box_size[where] = size[mine]
            cls[where] = flat_classes[mine]
        targets.append(LevelTargets(positive, offset, box_size, cls))
    return targets


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[..., N, 4] x [..., M, 4] (x1 y1 x2 y2) -> [..., N, M] IoU."""
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp(min=1e-9)


class YoloLoss(nn.Module):
    """TAO's YOLOv3 loss (module docstring) over every level; returns (total, {term: value})."""

    def __init__(self, decode: YoloDecode, weights: LossWeights, image_size: tuple[int, int]):
        super().__init__()
        self.decode, self.weights = decode, weights
        self.image_width, self.image_height = image_size

    def forward(self, raws: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor], classes: Sequence[torch.Tensor]):
        decode = self.decode
        anchors = [decode.level_anchors(i) for i in range(len(raws))]
        targets = assign_targets(boxes, classes, anchors, decode.strides, [r.shape[2:] for r in raws])
        padded, valid = _padded_boxes(boxes, raws[0].device)
        loc = obj_pos = obj_neg = cls_sum = raws[0].new_zeros(())
        positives = negatives = 0
        image_area = float(self.image_width * self.image_height)
        for i, (raw, target) in enumerate(zip(raws, targets)):
            t, obj, cls = decode.split(raw, i)
            positive = target.positive
            # Neutral anchors: a decoded box overlapping some ground truth enough is not a negative.
            with torch.no_grad():
                predicted = decode.boxes(t.detach(), i).reshape(raw.shape[0], -1, 4)
                if padded.shape[1]:
                    overlap = box_iou(predicted, padded).masked_fill(~valid[:, None, :], 0.0).amax(-1)
                else:
                    overlap = predicted.new_zeros(predicted.shape[:2])
                negative = (overlap.reshape(positive.shape) < self.weights.ignore_iou) & ~positive
            bce = F.binary_cross_entropy_with_logits(obj, positive.float(), reduction="none")
            obj_pos = obj_pos + bce[positive].sum()
            obj_neg = obj_neg + bce[negative].sum()
            positives += int(positive.sum())
            negatives += int(negative.sum())
            if positive.any():
                level_anchors = anchors[i].view(1, -1, 1, 1, 2).expand_as(target.size)
                wanted_wh = torch.log((target.size / level_anchors)[positive].clamp(*TARGET_SCALE_RANGE))
                wanted = torch.cat([target.offset[positive], wanted_wh], dim=-1)
                predicted_t = torch.cat([torch.sigmoid(t[..., :2][positive]), t[..., 2:][positive]], dim=-1)
                small_first = 2.0 - target.size[positive].prod(-1) / image_area
                loc = loc + (small_first * ((wanted - predicted_t) ** 2).sum(-1)).sum()
                one_hot = F.one_hot(target.cls[positive], decode.num_classes).to(cls.dtype)
                cls_sum = cls_sum + F.binary_cross_entropy_with_logits(cls[positive], one_hot, reduction="sum")
        positives, negatives = max(positives, 1), max(negatives, 1)
        terms = {"loc": loc / positives, "obj": obj_pos / positives, "noobj": obj_neg / negatives,
                 "cls": cls_sum / positives}
        w = self.weights
        total = w.loc * terms["loc"] + terms["obj"] + w.cls * terms["cls"] + w.neg_obj * terms["noobj"]
        return total, {name: float(value.detach()) for name, value in terms.items()}


def _padded_boxes(boxes: Sequence[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image boxes as [B, G, 4] (G the most boxes of an image) and the [B, G] mask of real ones."""
    most = max((len(b) for b in boxes), default=0)
    padded = torch.zeros(len(boxes), most, 4, device=device)
    valid = torch.zeros(len(boxes), most, dtype=torch.bool, device=device)
    for i, b in enumerate(boxes):
        padded[i, :len(b)] = b.reshape(-1, 4).to(device, torch.float32)
        valid[i, :len(b)] = True
    return padded, valid
