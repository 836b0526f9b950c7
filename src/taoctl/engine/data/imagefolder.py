"""ImageFolder classification data: scan, check, cache once, augment, normalise.

A split is ``root/<class>/<image>``. Scanning lists every file and finds what would crash an
epoch later (files that are not images, files that do not decode, empty class folders,
classes the model does not know); those files are skipped and named in one summary
(``strict=True`` turns the summary into an error). Grayscale, RGBA and palette images are
converted to the model's channel count and listed as converted.

Every image is decoded once and kept in memory as uint8 at a small size (JPEG draft mode
makes the decode of large photos cheap), so epochs cost augmentation only. Normalisation
(TAO's ``preprocess_mode`` caffe/torch/tf and ``image_mean``) runs on whole batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from taoctl.engine.data.kitti import IMAGE_EXTENSIONS
from taoctl.errors import TaoctlError

# TAO's eval/center crop keeps the central 87.5 % (224 of 256), as its Keras loader did.
CENTER_CROP_FRACTION = 0.875

INTERPOLATIONS = {"BILINEAR": Image.Resampling.BILINEAR, "BICUBIC": Image.Resampling.BICUBIC}


@dataclasses.dataclass
class FolderIndex:
    """What a scan found: usable samples and the problems met on the way."""

    root: str
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)
    converted: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, original mode)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = []
        if self.skipped:
            lines.append(f"{self.root}: skipped {len(self.skipped)} file(s):")
            lines += [f"  {path}: {why}" for path, why in self.skipped]
        if self.converted:
            lines.append(f"{self.root}: converted {len(self.converted)} image(s) to the model's channels:")
            lines += [f"  {path}: mode {mode}" for path, mode in self.converted]
        lines += [f"{self.root}: {w}" for w in self.warnings]
        return "\n".join(lines)

    def check(self, strict: bool) -> None:
        """Raise in strict mode when anything was skipped or a class is empty."""
        if strict and (self.skipped or self.warnings):
            first = self.skipped[0] if self.skipped else ("", self.warnings[0])
            raise TaoctlError(f"{first[0] or self.root}: {first[1]} ({len(self.skipped)} file(s) skipped, "
                              f"{len(self.warnings)} warning(s)); fix the data or drop --strict")

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts


def scan_image_folder(root: str | os.PathLike, classes: list[str] | None = None, what: str = "dataset") -> FolderIndex:
    """List ``root/<class>/*`` images; with ``classes`` given, folders outside it are skipped."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise TaoctlError(f"{what} path {root}: not a folder (expected <root>/<class>/<images>)")
    folders = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise TaoctlError(f"{what} path {root}: no class folders (expected <root>/<class>/<images>)")
    index = FolderIndex(root=str(root), classes=list(classes) if classes is not None else folders, samples=[])
    label_of = {name: i for i, name in enumerate(index.classes)}
    for name in folders:
        files = sorted(p for p in (root_path / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        if name not in label_of:
            index.warnings.append(f"class folder '{name}' ({len(files)} files) is not among the model's "
                                  f"classes {index.classes}; skipped")
            continue
        usable = 0
        for path in files:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                index.skipped.append((str(path), f"not an image file (extension '{path.suffix}')"))
                continue
            index.samples.append((str(path), label_of[name]))
            usable += 1
        if usable == 0:
            index.warnings.append(f"class folder '{name}' has no images")
    for name in index.classes:
        if name not in folders:
            index.warnings.append(f"class '{name}' has no folder here")
    if not index.samples:
        raise TaoctlError(f"{what} path {root}: no usable images")
    return index


def _open_image(path: str, channels: int, draft_size: tuple[int, int] | None) -> tuple[Image.Image, str]:
    image = Image.open(path)
    mode = image.mode
    if draft_size is not None and image.format == "JPEG":
        # Decode at the smallest JPEG scale that still covers the size we need.
        image.draft("L" if channels == 1 else "RGB", draft_size)
    if getattr(image, "is_animated", False):
        image.seek(0)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("L" if channels == 1 else "RGB")
    return image, mode


def _resize_short_side(image: Image.Image, short: int, resample) -> Image.Image:
    w, h = image.size
    scale = short / min(w, h)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return image.resize(size, resample, reducing_gap=3.0)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    w, h = image.size
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))


def prepare_image(image: Image.Image, size: tuple[int, int], mode: str, resample) -> Image.Image:
    """Bring a decoded image to what the model or the augmenter starts from.

    ``mode``: "resize" (the whole image to H x W, TAO's default), "center" (short side to
    H/0.875 then the central H x W) or "train" (short side to max(H, W)/0.875, aspect kept,
    for random crops).
    """
    height, width = size
    if mode == "resize":
        return image.resize((width, height), resample, reducing_gap=3.0)
    if mode == "center":
        short = math.ceil(max(height, width) / CENTER_CROP_FRACTION)
        image = _resize_short_side(image, short, resample)
        w, h = image.size
        # Crop the central 87.5 % in each direction, then fit it to H x W exactly.
        crop_w, crop_h = round(w * CENTER_CROP_FRACTION), round(h * CENTER_CROP_FRACTION)
        if w >= h:
            crop_w = round(crop_h * width / height)
        else:
            crop_h = round(crop_w * height / width)
        crop_w, crop_h = min(crop_w, w), min(crop_h, h)
        image = _center_crop(image, crop_h, crop_w)
        return image.resize((width, height), resample) if image.size != (width, height) else image
    if mode == "train":
        return _resize_short_side(image, math.ceil(max(height, width) / CENTER_CROP_FRACTION), resample)
    raise ValueError(f"unknown prepare mode {mode}")


def load_image(path: str, size: tuple[int, int], channels: int, mode: str = "resize",
               interpolation: str = "BILINEAR") -> np.ndarray:
    """One image as uint8 HxWxC, prepared as :func:`prepare_image` says (for inference)."""
    try:
        image, _ = _open_image(path, channels, (size[1], size[0]))
        image = prepare_image(image, size, mode, INTERPOLATIONS[interpolation])
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise TaoctlError(f"{path}: cannot read the image ({exc})") from exc
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def cache_images(index: FolderIndex, size: tuple[int, int], channels: int, mode: str,
                 interpolation: str = "BILINEAR", threads: int = 2) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Decode every sample once; files that fail are moved to ``index.skipped``.

    Returns (uint8 HxWxC arrays, labels, paths) for the images that decoded.
    """
    resample = INTERPOLATIONS[interpolation]
    draft = (math.ceil(size[1] / CENTER_CROP_FRACTION), math.ceil(size[0] / CENTER_CROP_FRACTION))

    def work(sample):
        path, label = sample
        try:
            image, original_mode = _open_image(path, channels, draft)
            image = prepare_image(image, size, mode, resample)
            array = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            return path, label, None, f"cannot decode ({type(exc).__name__}: {exc})", None
        if array.ndim == 2:
            array = array[:, :, None]
        converted = original_mode if original_mode not in ("RGB", "L") or (channels == 3) != (original_mode == "RGB") else None
        return path, label, array, None, converted

    arrays, labels, paths = [], [], []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # PIL decodes without the GIL
        for path, label, array, error, converted in pool.map(work, index.samples):
            if error is not None:
                index.skipped.append((path, error))
                continue
            if converted:
                index.converted.append((path, converted))
            arrays.append(array)
            labels.append(label)
            paths.append(path)
    index.samples = list(zip(paths, labels))
    if not arrays:
        raise TaoctlError(f"{index.root}: none of the images decode")
    return arrays, labels, paths


class CachedImageDataset(torch.utils.data.Dataset):
    """In-memory uint8 images; ``transform`` (an albumentations pipeline) runs per item.

    Items are (uint8 CxHxW tensor, label); normalisation happens per batch (:class:`Normalizer`).
    """

    def __init__(self, arrays: list[np.ndarray], labels: list[int], transform=None):
        self.arrays = arrays
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i):
        array = self.arrays[i]
        if self.transform is not None:
            array = self.transform(image=array)["image"]
            if array.ndim == 2:
                array = array[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), self.labels[i]


def train_transform(size: tuple[int, int], random_crop: bool, color: bool, hflip: bool, interpolation: str = "BILINEAR",
                    seed: int | None = None):
    """TAO makenet's training augmentation as an albumentations pipeline.

    random_crop: Inception-style crop (area 8-100 %, aspect 3/4-4/3) resized to H x W;
    otherwise the whole image is resized to H x W. ``seed`` seeds the pipeline's own random
    state (albumentations ignores the global seeds); DataLoader workers reseed it through
    :func:`seed_worker_transform`.
    """
    import albumentations as A
    import cv2

    inter = cv2.INTER_CUBIC if interpolation == "BICUBIC" else cv2.INTER_LINEAR
    steps = [A.RandomResizedCrop(size=size, scale=(0.08, 1.0), interpolation=inter) if random_crop
             else A.Resize(size[0], size[1], interpolation=inter)]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color:
        steps.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8))
    return A.Compose(steps, seed=seed)


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's copy of the dataset's albumentations
    pipeline a seed made of the worker's torch seed (the loader's seeded base seed + worker id) and
    the distributed rank, so that a seeded run repeats exactly and no two workers draw the same
    augmentations."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        from taoctl.engine.distributed import current

        seed = np.random.SeedSequence([info.seed, current().rank]).generate_state(1)[0]
        transform.set_random_seed(int(seed))


# TAO's preprocess modes (Keras' imagenet_utils.preprocess_input), on 0-255 input.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


class Normalizer:
    """uint8 NCHW (RGB or L) -> float32 model input, per TAO's ``preprocess_mode``.

    caffe: RGB->BGR and subtract the ImageNet mean (0-255 scale); torch: /255, mean/std;
    tf: scale to [-1, 1]. ``image_mean`` (keys r, g, b or l, 0-255 scale as in TAO)
    replaces the mode's mean.
    """

    MODES = ("caffe", "torch", "tf")

    def __init__(self, mode: str = "caffe", channels: int = 3, image_mean: dict | None = None):
        mode = (mode or "caffe").lower()
        if mode not in self.MODES:
            raise TaoctlError(f'unknown preprocessing mode "{mode}"; use caffe, torch or tf')
        self.mode, self.channels = mode, channels
        keys = ("l",) if channels == 1 else ("r", "g", "b")
        if image_mean:
            unknown = set(image_mean) - set(keys)
            if unknown:
                raise TaoctlError(f"image mean keys {sorted(unknown)} do not fit {channels}-channel input; "
                                  f"use {', '.join(keys)}")
            missing = [k for k in keys if k not in image_mean]
            if missing:
                raise TaoctlError(f"image mean without {', '.join(missing)}")
        self.bgr = mode == "caffe" and channels == 3
        if mode == "caffe":
            mean = [image_mean[k] for k in keys] if image_mean else (
                [117.3786] if channels == 1 else list(_CAFFE_MEAN_BGR[::-1]))
            std = [1.0] * channels
        elif mode == "torch":
            mean = [image_mean[k] for k in keys] if image_mean else (
                [0.449 * 255] if channels == 1 else [m * 255 for m in _TORCH_MEAN])
            std = [0.226 * 255] if channels == 1 else [s * 255 for s in _TORCH_STD]
        else:
            mean = [image_mean[k] for k in keys] if image_mean else [127.5] * channels
            std = [127.5] * channels
        if self.bgr:  # the model sees BGR, so order the constants that way
            mean, std = mean[::-1], std[::-1]
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, channels, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, channels, 1, 1)
        self._mean_t = torch.from_numpy(self.mean)
        self._std_t = torch.from_numpy(self.std)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if self.bgr:
            x = x.flip(1)
        return (x - self._mean_t.to(x.device)) / self._std_t.to(x.device)

    def numpy(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)
        if self.bgr:
            x = x[:, ::-1]
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)

    def describe(self) -> dict:
        """What a deployment needs to reproduce this (DeepStream offsets, scale)."""
        return {"mode": self.mode, "bgr": self.bgr, "mean": self.mean.ravel().tolist(),
                "std": self.std.ravel().tolist()}
