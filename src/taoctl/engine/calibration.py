"""Calibration files: real model inputs (uint8, N x C x H x W, not yet normalised) in one ``.npy``.

``calibration_tensorfile`` writes one; ``export --cal_data_file`` reads it (TAO's semantics:
an existing file stands in for the calibration images unless ``--cal_image_dir`` is given).
"""

from __future__ import annotations

import numpy as np

from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_path


def write_calibration_file(path, images: np.ndarray) -> None:
    """The inputs as one .npy, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, images)
    print(f"Wrote {len(images)} calibration images to {path}", flush=True)


def read_calibration_file(path, shape) -> np.ndarray:
    """The images of a calibration file, checked against the model's input shape."""
    not_ours = f"--cal_data_file {path}: not a .npy calibration file (calibration_tensorfile writes one)"
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":  # else numpy's message is about pickled data
                raise TaoctlError(not_ours)
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TaoctlError(f"{not_ours}: {exc}") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape) or not len(images):
        raise TaoctlError(f"--cal_data_file {path}: holds {images.dtype} images of shape {images.shape}; the model "
                          f"takes uint8 N x {' x '.join(map(str, shape))}")
    return images

