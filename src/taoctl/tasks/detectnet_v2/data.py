"""DetectNet_v2's data: ``dataset_config`` to frames, ``augmentation_config`` to training samples.

Frames come from dataset_convert's TFRecord shards (``data_sources``: ``tfrecords_path`` glob and
``image_directory_path``, as TAO); the validation split is ``validation_fold`` (the shards whose
name carries ``-fold-NNN-of-``, as dataset_convert names them) or ``validation_data_source``.
Source classes go through ``target_class_mapping`` (lower-cased, as TAO's converter writes them).

Training samples: each image is decoded once, cropped (``crop_*``) and resized to the output size,
and kept in memory (up to ``CACHE_BYTES``); augmentation then works on that small image. The
spatial augmentation is one affine warp (zoom and rotation about the centre, translation, flips)
whose corners re-fit each box, then boxes are clipped to the image and dropped when less than
``MIN_VISIBLE`` of them is left or they fall under ``min_bbox_width/height``. The colour
augmentation is one linear map in RGB (hue rotation about the grey axis, saturation, contrast about
``contrast_center``, a per-channel shift), as TAO's colour transform matrices are. Every random draw
comes from a generator seeded by (seed, epoch, index): a run replays exactly.

Sizes: images whose (cropped, scaled) size differs from the output size are resized to it. TAO
resizes only with ``enable_auto_resize`` and otherwise fails on such images; taoctl resizes either
way and prints one notice naming the sizes, because a wrong spec size only costs accuracy, while
refusing would stop a run over one odd image.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from taoctl.engine.data import kitti
from taoctl.engine.detection import frames as det_frames
from taoctl.engine.detection.images import read_rgb, resized
from taoctl.errors import TaoctlError
from taoctl.tasks.detectnet_v2.encoding import STRIDE

CACHE_BYTES = 2 * 2**30  # decoded training images kept in memory; beyond it, decoded on every use
MIN_VISIBLE = 0.2  # a box keeping less of its area inside the image after augmentation is dropped


@dataclasses.dataclass
class DetectNetData:
    class_names: list[str]
    train_frames: list[kitti.Frame]
    val_frames: list[kitti.Frame]
    width: int
    height: int
    report: kitti.LabelReport


def load_data(spec, *, seed: int, strict: bool = False, echo: Callable[[str], None] = print) -> DetectNetData:
    """Training and validation frames of an experiment spec, objects mapped to the target classes.

    ``seed`` shuffles the training frames, as TAO's loader shuffles its records; ``strict`` stops on
    any label problem. The label summary goes to ``echo``.
    """
    dataset = spec.dataset_config
    class_names = target_classes(spec)
    preprocessing = spec.augmentation_config.preprocessing
    width, height = preprocessing.output_image_width, preprocessing.output_image_height
    for field, value in (("output_image_width", width), ("output_image_height", height)):
        if not value or value % STRIDE:
            raise TaoctlError(f"augmentation_config.preprocessing.{field} is {value}; it must be a positive "
                              f"multiple of {STRIDE} (the network's output stride)")
    mapping = class_mapping(spec, class_names)
    strays = sorted(set(mapping.values()) - set(class_names))
    if strays:
        echo(f"Note: dataset_config.target_class_mapping maps to {', '.join(strays)}, not among "
             f"cost_function_config.target_classes; those objects are not trained on")
    if not dataset.data_sources:
        raise TaoctlError("dataset_config.data_sources is empty: add the TFRecords written by dataset_convert")
    split = dataset.WhichOneof("dataset_split_type")
    validation = ([("dataset_config.validation_data_source", dataset.validation_data_source)]
                  if split == "validation_data_source" else [])
    loaded = det_frames.split_frames(
        [(f"dataset_config.data_sources[{i}]", source) for i, source in enumerate(dataset.data_sources)], validation,
        dataset.validation_fold if split == "validation_fold" else None, mapping, class_names,
        det_frames.image_extension(dataset), strict=strict, echo=echo,
        classes_field="cost_function_config.target_classes")
    if split == "validation_fold" and not loaded.val:
        folds = ", ".join(str(f) for f in loaded.folds) or "none (no -fold-NNN-of- in the shard names)"
        raise TaoctlError(f"dataset_config.validation_fold {dataset.validation_fold}: no frames in that fold; "
                          f"the data_sources' shards hold folds {folds}")
    _notice_resize(loaded.train + loaded.val, preprocessing, echo)
    random.Random(seed).shuffle(loaded.train)
    return DetectNetData(class_names, loaded.train, loaded.val, width, height, loaded.report)


def target_classes(spec) -> list[str]:
    """``cost_function_config.target_classes``' names, lower-cased, in the spec's order (the heads' order)."""
    names = [str(t.name).lower() for t in spec.cost_function_config.target_classes]
    if not names:
        raise TaoctlError("cost_function_config.target_classes is empty: name the classes to detect")
    return names


def class_mapping(spec, class_names: list[str]) -> dict[str, str]:
    """``dataset_config.target_class_mapping`` lower-cased; empty, each target class stands for itself."""
    mapping = {k.lower(): v.lower() for k, v in spec.dataset_config.target_class_mapping.items()}
    return mapping or {name: name for name in class_names}


def _crop_box(preprocessing, width: int, height: int, where: str) -> tuple[int, int, int, int]:
    """The crop (left, top, right, bottom) of an image; the whole image when no crop_* is set.

    TAO's crop_* are the crop's edges in pixels; right/bottom 0 mean the image's edge.
    """
    if preprocessing is None:
        return 0, 0, width, height
    left, top = preprocessing.crop_left, preprocessing.crop_top
    right = preprocessing.crop_right or width
    bottom = preprocessing.crop_bottom or height
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise TaoctlError(f"augmentation_config.preprocessing crop_left/top/right/bottom {left} {top} {right} "
                          f"{bottom} do not fit {where} ({width}x{height})")
    return left, top, right, bottom


def _notice_resize(frames: list[kitti.Frame], preprocessing, echo) -> None:
    if preprocessing.enable_auto_resize:
        return
    sizes = Counter()
    for frame in frames:
        left, top, right, bottom = _crop_box(preprocessing, frame.width, frame.height, frame.image_path)
        sizes[(round((right - left) * (preprocessing.scale_width or 1.0)),
               round((bottom - top) * (preprocessing.scale_height or 1.0)))] += 1
    target = (preprocessing.output_image_width, preprocessing.output_image_height)
    others = {size: n for size, n in sizes.items() if size != target}
    if others:
        listed = ", ".join(f"{n} at {w}x{h}" for (w, h), n in sorted(others.items(), key=lambda kv: -kv[1]))
        echo(f"Note: images are not augmentation_config.preprocessing's output size {target[0]}x{target[1]} "
             f"({listed}); resizing them to it (TAO needs enable_auto_resize: true for this)")


def _frame_sample(frame: kitti.Frame, class_index: dict[str, int], width: int, height: int,
                  preprocessing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 image cropped and resized, boxes [N, 4] in output pixels, classes [N])."""
    image = read_rgb(frame.image_path)
    actual_h, actual_w = image.shape[:2]
    left, top, right, bottom = _crop_box(preprocessing, actual_w, actual_h, frame.image_path)
    image = resized(image[top:bottom, left:right], width, height)
    # The label's coordinates are in the frame's recorded size; the decoded image's is the truth.
    scale_to_image = np.array([actual_w / frame.width, actual_h / frame.height] * 2, dtype=np.float32)
    objects = [o for o in frame.objects if o.cls in class_index]
    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4) * scale_to_image
    boxes -= np.array([left, top, left, top], dtype=np.float32)
    boxes *= np.array([width / (right - left), height / (bottom - top)] * 2, dtype=np.float32)
    boxes, keep = _clipped(boxes, width, height)
    classes = np.array([class_index[o.cls] for o in objects], dtype=np.int64)[keep]
    return image, boxes, classes


def _clipped(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the image and the mask of those keeping at least MIN_VISIBLE of their area."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    visible_w, visible_h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (visible_w >= 1) & (visible_h >= 1) & (visible_w * visible_h >= MIN_VISIBLE * np.maximum(area, 1e-6))
    return clipped[keep], keep


class DetectNetTrainDataset(torch.utils.data.Dataset):
    """Augmented training samples: (uint8 3 x H x W RGB, float32 boxes [N, 4] x1 y1 x2 y2, int64 classes [N])."""

    def __init__(self, frames: Sequence[kitti.Frame], class_names: list[str], width: int, height: int,
                 augmentation_config, seed: int):
        self.frames = list(frames)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.width, self.height = width, height
        self.preprocessing = augmentation_config.preprocessing
        self.spatial = augmentation_config.spatial_augmentation
        self.color = augmentation_config.color_augmentation
        self.seed = seed
        # In shared memory, so DataLoader workers (persistent ones too) see set_epoch's value.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        per_image = width * height * 3
        cached = min(len(self.frames), CACHE_BYTES // per_image)
        self._cache = [_frame_sample(f, self.class_index, width, height, self.preprocessing)
                       for f in self.frames[:cached]]

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentations; call it before iterating the epoch's DataLoader."""
        self._epoch[0] = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if i < len(self._cache):
            image, boxes, classes = self._cache[i]
        else:
            image, boxes, classes = _frame_sample(self.frames[i], self.class_index, self.width, self.height,
                                                  self.preprocessing)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image, boxes, keep = self._spatial(image, boxes, rng)
        classes = classes[keep]
        image = self._colour(image, rng)
        large = ((boxes[:, 2] - boxes[:, 0]) >= self.preprocessing.min_bbox_width) & \
                ((boxes[:, 3] - boxes[:, 1]) >= self.preprocessing.min_bbox_height)
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(boxes[large], dtype=np.float32)),
                torch.from_numpy(classes[large]))

    def _spatial(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
        import cv2

        spatial, width, height = self.spatial, self.width, self.height
        low, high = spatial.zoom_min or 1.0, spatial.zoom_max or 1.0
        zoom = rng.uniform(min(low, high), max(low, high))
        angle = 0.0
        if spatial.rotate_rad_max and rng.random() < spatial.rotate_probability:
            angle = rng.uniform(-spatial.rotate_rad_max, spatial.rotate_rad_max)
        shift_x = rng.uniform(-spatial.translate_max_x, spatial.translate_max_x)
        shift_y = rng.uniform(-spatial.translate_max_y, spatial.translate_max_y)
        flip_x = rng.random() < spatial.hflip_probability
        flip_y = rng.random() < spatial.vflip_probability
        centre_x, centre_y = width / 2.0, height / 2.0
        # Output <- input: about the centre, flip, rotate (positive turns clockwise on screen), zoom, then shift.
        cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
        linear = np.array([[cos, -sin], [sin, cos]]) @ np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0])
        offset = np.array([centre_x + shift_x, centre_y + shift_y]) - linear @ np.array([centre_x, centre_y])
        matrix = np.hstack([linear, offset[:, None]])
        if np.allclose(matrix, [[1, 0, 0], [0, 1, 0]]):
            return image, boxes, np.ones(len(boxes), dtype=bool)
        image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
        moved = corners @ linear.T.astype(np.float32) + offset.astype(np.float32)
        fitted = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1).astype(np.float32)
        fitted, keep = _clipped(fitted, width, height)
        return image, fitted, keep

    def _colour(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        color = self.color
        if not (color.hue_rotation_max or color.saturation_shift_max or color.contrast_scale_max
                or color.color_shift_stddev):
            return image
        hue = math.radians(rng.uniform(-color.hue_rotation_max, color.hue_rotation_max))
        saturation = 1.0 + rng.uniform(-color.saturation_shift_max, color.saturation_shift_max)
        contrast = 1.0 + rng.uniform(-color.contrast_scale_max, color.contrast_scale_max)
        shift = rng.normal(0.0, color.color_shift_stddev, 3) * 255.0 if color.color_shift_stddev else np.zeros(3)
        # Hue: rotation about the grey axis (Rodrigues); saturation: away from / towards grey.
        axis = np.full(3, 1.0 / math.sqrt(3.0))
        cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        grey = np.outer(axis, axis)
        rotation = math.cos(hue) * np.eye(3) + math.sin(hue) * cross + (1 - math.cos(hue)) * grey
        saturate = grey + saturation * (np.eye(3) - grey)
        centre = 255.0 * (color.contrast_center if color.contrast_center else 0.5)
        linear = contrast * (saturate @ rotation)
        offset = centre * (1.0 - contrast) + shift
        # cv2.transform applies the 3 x 4 affine map per pixel, rounding and saturating to uint8.
        return cv2.transform(image, np.hstack([linear, offset[:, None]]).astype(np.float32))


def collate(batch) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """A DataLoader batch: uint8 [B, 3, H, W], and per image its boxes and classes."""
    images, boxes, classes = zip(*batch)
    return torch.stack(images), list(boxes), list(classes)


def load_eval_samples(frames: Sequence[kitti.Frame], class_names: list[str], width: int, height: int,
                      preprocessing=None) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Unaugmented images uint8 [N, 3, H, W], boxes float32 [N_i, 4] in output pixels, classes int64 [N_i].

    ``preprocessing`` (``augmentation_config.preprocessing``) applies its crop, as in training.
    """
    class_index = {name: i for i, name in enumerate(class_names)}
    images = np.empty((len(frames), 3, height, width), dtype=np.uint8)
    boxes, classes = [], []
    for i, frame in enumerate(frames):
        image, frame_boxes, frame_classes = _frame_sample(frame, class_index, width, height, preprocessing)
        images[i] = image.transpose(2, 0, 1)
        boxes.append(frame_boxes)
        classes.append(frame_classes)
    return images, boxes, classes


def kitti_frames(image_dir: str | os.PathLike, label_dir: str | os.PathLike, spec,
                 class_names: list[str]) -> list[kitti.Frame]:
    """Frames of a KITTI folder pair (evaluate's -i/-l), classes mapped by ``dataset_config.target_class_mapping``."""
    return det_frames.kitti_folder_frames(image_dir, label_dir, class_mapping(spec, class_names), class_names)
