"""Deterministic sample datasets for demos and tests: ``python -m taoctl.engine.data.samples --out DIR``.

Writes, from numpy + Pillow only and in a few seconds,

* ``DIR/classification/{train,val}/<class>/*.png``: an ImageFolder of three shape classes
  (circle, square, triangle) on textured, noisy backgrounds. Each class also leans to one hue
  so a small CNN separates them in a couple of epochs, while shape stays the defining cue.
* ``DIR/kitti/{images,labels}``: a KITTI 2D detection set of the same three shapes, several
  non-overlapping objects per image, with boxes that are the exact pixel extent of what was drawn.
* ``DIR/text_classification/{train,dev}.tsv`` + ``labels.txt``: NeMo's ``text<TAB>label`` format, short
  messages built from templates, ``ham`` (0: everyday messages) or ``spam`` (1: prize and offer messages).

The output depends only on the seed and ``VERSION``; a second run with the same ones finds
``DIR/samples.json`` and does nothing. Everything is built in a temporary folder beside DIR
and moved into place at the end, so an interrupted run never leaves a half-written set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from taoctl.engine.cli import temporary_directory

# Bump whenever the generated content changes, so old sample folders are regenerated.
VERSION = 2
STAMP = "samples.json"
CLASSES = ("circle", "square", "triangle")
# Base hue (RGB) per class; each drawn shape jitters around it.
_CLASS_COLOURS = {"circle": (220, 60, 50), "square": (50, 170, 70), "triangle": (60, 90, 220)}

CLASSIFICATION_SIZE = 64
CLASSIFICATION_COUNTS = {"train": 90, "val": 30}  # per class
KITTI_SIZE = (320, 240)  # width, height: multiples of 16 as DetectNet_v2 wants
KITTI_IMAGES = 200
KITTI_OBJECTS = (2, 6)  # objects per image, inclusive
TEXT_COUNTS = {"train": 160, "dev": 48}
TEXT_LABELS = ("ham", "spam")
# Templates and fillers of the two message classes; words are shared across classes where they can be.
_TEXT_TEMPLATES = {
    "ham": ("are we still meeting for {meal} {day}?", "i will be home by {time}, can you get {item}",
            "thanks for the {item}, see you {day}", "running late, save me some {meal}",
            "did you call {name} about {day}", "can you pick up {item} on the way {day}"),
    "spam": ("congratulations! you have won a {prize}, call {number} now to claim",
             "urgent: your {prize} is waiting, text win to {number}",
             "free {prize} for you {day}! reply yes to {number}", "you are selected for a {prize}, claim it at {number}",
             "final notice: claim your cash {prize} today, call {number}", "win a {prize} {day}, just text {number}"),
}
_TEXT_FILLERS = {
    "meal": ("lunch", "dinner", "breakfast", "coffee"), "day": ("today", "tomorrow", "on friday", "tonight"),
    "time": ("six", "seven", "eight thirty", "noon"), "item": ("milk", "the keys", "bread", "the tickets"),
    "name": ("tom", "anna", "mum", "the office"), "prize": ("holiday", "phone", "1000 pounds", "cruise"),
    "number": ("08001234", "87121", "09061701461", "83355"),
}
KITTI_OBJECT_SIDE = (24, 72)  # box side in pixels, inclusive


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random colour field with stripes and pixel noise, so shapes are not on flat colour."""
    coarse = rng.uniform(60, 200, size=(4, 4, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC),
                       dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    stripes = 18 * np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * np.float32(2 * np.pi / period))
    noise = rng.standard_normal(size=(height, width, 3), dtype=np.float32) * 12
    pixels = field + stripes[..., None] + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    base = np.array(_CLASS_COLOURS[name], dtype=np.int32)
    return tuple(int(c) for c in np.clip(base + rng.integers(-35, 36, size=3), 0, 255))


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, name: str,
                box: tuple[int, int, int, int]) -> None:
    """Draw a shape whose pixels span exactly ``box`` = (x1, y1, x2, y2), x2/y2 exclusive."""
    x1, y1, x2, y2 = box
    fill = _colour(rng, name)
    outline = tuple(max(c - 70, 0) for c in fill)
    if name == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill, outline=outline, width=2)
    elif name == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill, outline=outline, width=2)
    else:
        # Apex somewhere on the top edge, base on the bottom edge: the extent is the whole box.
        apex = int(rng.integers(x1, x2))
        draw.polygon([(apex, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill, outline=outline)


def _classification_image(rng: np.random.Generator, name: str) -> Image.Image:
    size = CLASSIFICATION_SIZE
    image = _background(rng, size, size)
    side = int(rng.integers(size // 2, size - 8))
    x1 = int(rng.integers(2, size - side - 1))
    y1 = int(rng.integers(2, size - side - 1))
    _draw_shape(ImageDraw.Draw(image), rng, name, (x1, y1, x1 + side, y1 + side))
    return image


def _place_boxes(rng: np.random.Generator, count: int) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` boxes inside the image that do not touch each other (exact, unoccluded truth)."""
    width, height = KITTI_SIZE
    lo, hi = KITTI_OBJECT_SIDE
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count * 30):
        if len(boxes) == count:
            break
        w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        candidate = (x1, y1, x1 + w, y1 + h)
        gap = 3
        if all(candidate[0] >= b[2] + gap or candidate[2] + gap <= b[0] or
               candidate[1] >= b[3] + gap or candidate[3] + gap <= b[1] for b in boxes):
            boxes.append(candidate)
    return boxes


def kitti_line(name: str, box) -> str:
    """One 15-field KITTI label line with only the 2D box set, as TAO's converters read it."""
    x1, y1, x2, y2 = box
    return f"{name} 0.00 0 0.00 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0.00 0.00 0.00 0.00 0.00 0.00 0.00"


def _write_classification(root: Path, rng: np.random.Generator) -> dict:
    counts = {}
    for split, per_class in CLASSIFICATION_COUNTS.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                _classification_image(rng, name).save(folder / f"{name}_{i:04d}.png", compress_level=1)
            counts[f"{split}/{name}"] = per_class
    return counts


def _write_kitti(root: Path, rng: np.random.Generator) -> dict:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    width, height = KITTI_SIZE
    per_class = dict.fromkeys(CLASSES, 0)
    for i in range(KITTI_IMAGES):
        image = _background(rng, width, height)
        draw = ImageDraw.Draw(image)
        lines = []
        for box in _place_boxes(rng, int(rng.integers(KITTI_OBJECTS[0], KITTI_OBJECTS[1] + 1))):
            name = CLASSES[int(rng.integers(len(CLASSES)))]
            if name in ("circle", "square"):  # keep these two square so their box is the shape
                side = min(box[2] - box[0], box[3] - box[1])
                box = (box[0], box[1], box[0] + side, box[1] + side)
            _draw_shape(draw, rng, name, box)
            lines.append(kitti_line(name, box))
            per_class[name] += 1
        stem = f"{i:06d}"
        image.save(root / "images" / f"{stem}.png", compress_level=1)  # noise barely compresses
        (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return {"images": KITTI_IMAGES, "size": list(KITTI_SIZE), "objects": per_class}


def _message(rng: np.random.Generator, label: str) -> str:
    templates = _TEXT_TEMPLATES[label]
    template = templates[int(rng.integers(len(templates)))]
    fillers = {key: words[int(rng.integers(len(words)))] for key, words in _TEXT_FILLERS.items()}
    return template.format(**fillers)


def _write_text_classification(root: Path, rng: np.random.Generator) -> dict:
    root.mkdir(parents=True)
    counts = {}
    for split, count in TEXT_COUNTS.items():
        labels = rng.permutation(np.arange(count) % len(TEXT_LABELS))
        lines = [f"{_message(rng, TEXT_LABELS[label])}\t{label}" for label in labels]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        counts[split] = count
    (root / "labels.txt").write_text("\n".join(TEXT_LABELS) + "\n")
    return counts


def _stamp(seed: int) -> dict:
    return {"generator": "taoctl.engine.data.samples", "version": VERSION, "seed": seed}


def is_generated(out: str | os.PathLike, seed: int = 0) -> bool:
    stamp = Path(out) / STAMP
    try:
        found = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    expected = _stamp(seed)
    return all(found.get(k) == v for k, v in expected.items()) and all(
        (Path(out) / part).is_dir() for part in _PARTS)


_PARTS = ("classification", "kitti", "text_classification")


def generate(out: str | os.PathLike, seed: int = 0, force: bool = False) -> dict:
    """Write the sample sets under ``out``; returns the stamp (with counts). Skips when already there."""
    out = Path(out)
    if not force and is_generated(out, seed):
        return json.loads((out / STAMP).read_text()) | {"skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    # Separate streams: changing one set's size does not reshuffle the other.
    cls_rng, det_rng, text_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    with temporary_directory(out, prefix=".samples-") as tmp:
        tmp = Path(tmp)
        stamp = _stamp(seed)
        stamp["classification"] = _write_classification(tmp / "classification", cls_rng)
        stamp["kitti"] = _write_kitti(tmp / "kitti", det_rng)
        stamp["text_classification"] = _write_text_classification(tmp / "text_classification", text_rng)
        (out / STAMP).unlink(missing_ok=True)
        for part in _PARTS:
            if (out / part).exists():
                shutil.rmtree(out / part)
            os.replace(tmp / part, out / part)
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        os.replace(tmp / STAMP, out / STAMP)  # written last: its presence means the set is complete
    return stamp | {"skipped": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taoctl.engine.data.samples", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Folder to write classification/ and kitti/ into.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    parser.add_argument("--force", action="store_true", help="Regenerate even when already there.")
    args = parser.parse_args(argv)
    stamp = generate(args.out, args.seed, args.force)
    state = "already generated" if stamp["skipped"] else "generated"
    kitti = stamp["kitti"]
    print(f"{state}: {args.out} (seed {args.seed}): classification {stamp['classification']}; "
          f"kitti {kitti['images']} images {kitti['size'][0]}x{kitti['size'][1]}, objects {kitti['objects']}; "
          f"text_classification {stamp['text_classification']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
