"""Detector images: decoded, resized to the network input with their boxes, and YOLO's augmentation.

Every image is stretched to the network input (TAO's YOLO resizes without letterboxing), boxes
scaled alike. Training samples are decoded once and kept (up to ``CACHE_BYTES``); augmentation
then works on the small image. ``YoloAugmentation`` is TAO's YOLO ``augmentation_config``:
``jitter`` moves each edge of a crop window by up to that fraction of the image (inwards: a
zoom in, outwards: a zoom out with black padding) and stretches the window back to the input
size; ``horizontal_flip`` / ``vertical_flip`` are flip probabilities; ``hue`` shifts hue by up
to that fraction of the colour circle, ``saturation`` and ``exposure`` scale saturation and
value by a factor drawn log-uniformly from [1/s, s]. Draws come from a generator seeded by
(seed, epoch, index), so a run replays exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from taoctl.engine.data import kitti
from taoctl.errors import TaoctlError

CACHE_BYTES = 2 * 2**30
MIN_BOX_PIXELS = 1.0  # boxes narrower or lower than this after augmentation are dropped


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    import cv2

    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise TaoctlError(f"cannot read image {path} (missing, corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def frame_sample(frame: kitti.Frame, class_index: dict[str, int], width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 RGB at the network size, boxes [N, 4] float32 in its pixels, classes [N] int64)."""
    image = read_rgb(frame.image_path)
    objects = [o for o in frame.objects if o.cls in class_index]
    # Labels are in the frame's recorded size, whatever size the decoded image has.
    scale = np.array([width / frame.width, height / frame.height] * 2, dtype=np.float32)
    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4) * scale
    boxes, keep = clip_boxes(boxes, width, height)
    classes = np.array([class_index[o.cls] for o in objects], dtype=np.int64)[keep]
    return resized(image, width, height), boxes, classes


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the image, and the mask of those still at least MIN_BOX_PIXELS wide and high."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= MIN_BOX_PIXELS) & ((clipped[:, 3] - clipped[:, 1]) >= MIN_BOX_PIXELS)
    return clipped[keep], keep


def load_samples(frames: Sequence[kitti.Frame], class_names: Sequence[str], width: int, height: int
                 ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Unaugmented images uint8 [N, 3, H, W] and each one's boxes (network pixels) and classes."""
    class_index = {name: i for i, name in enumerate(class_names)}
    images = np.empty((len(frames), 3, height, width), dtype=np.uint8)
    boxes, classes = [], []
    for i, frame in enumerate(frames):
        image, frame_boxes, frame_classes = frame_sample(frame, class_index, width, height)
        images[i] = image.transpose(2, 0, 1)
        boxes.append(frame_boxes)
        classes.append(frame_classes)
    return images, boxes, classes


def image_files(path: str | os.PathLike) -> list[str]:
    """One image file, or a folder's image files sorted by name."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise TaoctlError(f"image path {path} does not exist")
    files = sorted(os.path.join(path, name) for name in os.listdir(path)
                   if os.path.splitext(name)[1].lower() in kitti.IMAGE_EXTENSIONS
                   and os.path.isfile(os.path.join(path, name)))
    if not files:
        raise TaoctlError(f"no images in {path} (looked for {', '.join(kitti.IMAGE_EXTENSIONS)})")
    return files


def load_images(paths: Sequence[str | os.PathLike], width: int, height: int
                ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Images resized to the network input, uint8 [N, 3, H, W], and each one's original (width, height)."""
    images = np.empty((len(paths), 3, height, width), dtype=np.uint8)
    sizes = []
    for i, path in enumerate(paths):
        image = read_rgb(path)
        sizes.append((image.shape[1], image.shape[0]))
        images[i] = resized(image, width, height).transpose(2, 0, 1)
    return images, sizes


@dataclasses.dataclass(frozen=True)
class YoloAugmentation:
    """TAO's YOLO augmentation_config (module docstring); zeros switch each part off."""

    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    vertical_flip: float = 0.0
    horizontal_flip: float = 0.0
    jitter: float = 0.0

    def __call__(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
        """(H x W x 3 uint8, boxes [N, 4]) -> augmented (image, boxes, mask of the input boxes kept)."""
        image, boxes, keep = self._geometry(image, boxes, rng)
        return self._colour(image, rng), boxes, keep

    def _geometry(self, image, boxes, rng):
        import cv2

        height, width = image.shape[:2]
        left, right = (rng.uniform(-self.jitter, self.jitter, 2) * width) if self.jitter else (0.0, 0.0)
        top, bottom = (rng.uniform(-self.jitter, self.jitter, 2) * height) if self.jitter else (0.0, 0.0)
        flip_x = rng.random() < self.horizontal_flip
        flip_y = rng.random() < self.vertical_flip
        # The window [left, width - right] x [top, height - bottom] is stretched onto the whole image.
        scale_x = width / max(width - left - right, 1.0)
        scale_y = height / max(height - top - bottom, 1.0)
        matrix = np.array([[scale_x, 0.0, -left * scale_x], [0.0, scale_y, -top * scale_y]])
        if flip_x:
            matrix[0] = [-matrix[0, 0], 0.0, width - matrix[0, 2]]
        if flip_y:
            matrix[1] = [0.0, -matrix[1, 1], height - matrix[1, 2]]
        if np.allclose(matrix, [[1, 0, 0], [0, 1, 0]]):
            return image, boxes, np.ones(len(boxes), dtype=bool)
        image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        xs = boxes[:, [0, 2]] * matrix[0, 0] + matrix[0, 2]
        ys = boxes[:, [1, 3]] * matrix[1, 1] + matrix[1, 2]
        moved = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1).astype(np.float32)
        moved, keep = clip_boxes(moved, width, height)
        return image, moved, keep

    def _colour(self, image, rng):
        import cv2

        if not self.hue and self.saturation <= 1.0 and self.exposure <= 1.0:
            return image
        hue_shift = rng.uniform(-self.hue, self.hue) * 180.0  # OpenCV's 8-bit hue runs 0..180
        saturation = math.exp(rng.uniform(-1, 1) * math.log(max(self.saturation, 1.0)))
        value = math.exp(rng.uniform(-1, 1) * math.log(max(self.exposure, 1.0)))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + hue_shift, 180.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] * value, 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


class DetectionTrainDataset(torch.utils.data.Dataset):
    """Augmented samples: (uint8 3 x H x W RGB, float32 boxes [N, 4], int64 classes [N])."""

    def __init__(self, frames: Sequence[kitti.Frame], class_names: Sequence[str], width: int, height: int,
                 augmentation: YoloAugmentation, seed: int):
        self.frames = list(frames)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.width, self.height = width, height
        self.augmentation, self.seed = augmentation, seed
        # In shared memory, so DataLoader workers (persistent ones too) see set_epoch's value.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        cached = min(len(self.frames), CACHE_BYTES // (width * height * 3))
        self._cache = [frame_sample(f, self.class_index, width, height) for f in self.frames[:cached]]

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        if i < len(self._cache):
            image, boxes, classes = self._cache[i]
        else:
            image, boxes, classes = frame_sample(self.frames[i], self.class_index, self.width, self.height)
        rng = np.random.default_rng([self.seed, int(self._epoch[0]), i])
        image, boxes, keep = self.augmentation(image, boxes, rng)
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)), torch.from_numpy(classes[keep]))


def collate(batch):
    """A DataLoader batch: uint8 [B, 3, H, W], and per image its boxes and classes."""
    images, boxes, classes = zip(*batch)
    return torch.stack(images), list(boxes), list(classes)
