"""Inference outputs of a detector, as TAO's YOLO/SSD ``inference`` writes them.

Per image, under the results dir: ``images_annotated/<image name>``, the original image with each
detection drawn in its class colour and labelled ``class:confidence``, and ``labels/<stem>.txt``,
one KITTI line per detection whose 16th field is the confidence. Boxes come in network-input
pixels and are scaled back to the original image. Both files of an image appear together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from taoctl.engine.data.kitti import KittiObject
from taoctl.engine.metrics.detection import ImageDetections
from taoctl.fileio import atomic_paths

PALETTE = ((0, 255, 0), (255, 0, 0), (0, 128, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
           (255, 128, 0), (128, 0, 255))


def to_original(boxes: np.ndarray, original_size: tuple[int, int], network_size: tuple[int, int]) -> np.ndarray:
    """Network-input pixel boxes -> original image pixels (sizes are (width, height)), clipped to the image."""
    (ow, oh), (nw, nh) = original_size, network_size
    scale = np.array([ow / nw, oh / nh, ow / nw, oh / nh], dtype=np.float64)
    return np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale, 0, [ow, oh, ow, oh])


def write_detections(out_dir, image_path: str, original_size: tuple[int, int], network_size: tuple[int, int],
                     detections: ImageDetections, class_names: Sequence[str], line_width: int = 2) -> None:
    out_dir = Path(out_dir)
    name = Path(image_path).name
    boxes = to_original(detections.boxes, original_size, network_size)
    with atomic_paths() as stage:
        with Image.open(image_path) as source:
            image = source.convert("RGB")
        draw = ImageDraw.Draw(image)
        lines = []
        for box, cls, score in zip(boxes, detections.classes, detections.scores):
            label, colour = class_names[int(cls)], PALETTE[int(cls) % len(PALETTE)]
            draw.rectangle(tuple(box), outline=colour, width=line_width)
            draw.text((box[0], box[1]), f"{label}:{score:.3f}", fill=colour)
            lines.append(KittiObject(label, tuple(float(v) for v in box), score=float(score)).to_line())
        image.save(stage(out_dir / "images_annotated" / name))
        stage(out_dir / "labels" / f"{Path(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
