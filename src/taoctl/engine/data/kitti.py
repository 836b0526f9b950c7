"""KITTI 2D detection labels: read, validate, and load as frames; TAO's detection TFRecords too.

A KITTI label line has 15 fields ``class truncated occluded alpha x1 y1 x2 y2 h w l x y z rot_y``.
Every defect that makes other tools drop labels quietly (and train to mAP 0) is recorded in a
``LabelReport`` with its ``file:line``: a missing image or label, a wrong field count, non-numeric
fields, inverted or zero-area boxes, boxes outside the image (clipped), classes outside the class
mapping, unreadable images, and mixed resolutions when one size is required. Converters,
detectors reading raw KITTI and ``augment`` share it, so a dataset is judged the same everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic
from taoctl.text import is_number

# Image file suffixes every dataset reader accepts, lower case: compare ``suffix.lower()``.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Issue kinds, in report order, with what happened to the data.
ISSUE_KINDS = {
    "missing_image": "label file, or COCO annotation, without an image (skipped)",
    "missing_label": "image without a label file (frame skipped)",
    "unreadable_image": "image that cannot be read (frame skipped)",
    "field_count": "line without 15 fields (16 for detections), or COCO entry without a field it needs (skipped)",
    "non_numeric": "non-numeric field (object skipped)",
    "inverted_box": "x1 >= x2 or y1 >= y2 (object skipped)",
    "zero_area": "box of zero width or height (object skipped)",
    "outside_image": "box reaching outside the image (clipped)",
    "outside_image_dropped": "box entirely outside the image (object skipped)",
    "unknown_class": "class not in the class mapping (object not used for training)",
    "mixed_resolution": "image size differs from the dataset's (frame skipped where one size is required)",
}
_EXAMPLES_PER_KIND = 20
# A KITTI line is about 100 bytes: 16 MiB is over 100,000 objects in one image.
MAX_LABEL_BYTES = 16 * 2**20


@dataclasses.dataclass
class KittiObject:
    cls: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    truncation: float = 0.0
    occlusion: int = 0
    alpha: float = 0.0
    dimensions: tuple[float, float, float] = (0.0, 0.0, 0.0)  # h, w, l
    location: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x, y, z
    rotation_y: float = 0.0
    line: int = 0
    score: float | None = None  # a detection's confidence: the 16th field of inference output

    def to_line(self) -> str:
        x1, y1, x2, y2 = self.box
        h, w, l = self.dimensions  # noqa: E741 - KITTI's names
        x, y, z = self.location
        return (f"{self.cls} {self.truncation:.2f} {int(self.occlusion)} {self.alpha:.2f} "
                f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} {h:.2f} {w:.2f} {l:.2f} {x:.2f} {y:.2f} {z:.2f} "
                f"{self.rotation_y:.2f}" + ("" if self.score is None else f" {self.score:.6f}"))


@dataclasses.dataclass
class Frame:
    """One image and its objects (boxes clipped to the image)."""

    frame_id: str  # stem, or image_dir_name/stem as TAO's converter writes it
    image_path: str
    width: int
    height: int
    objects: list[KittiObject]

    @property
    def classes(self) -> list[str]:
        return [o.cls for o in self.objects]

    @property
    def boxes(self) -> np.ndarray:
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)


@dataclasses.dataclass
class LabelReport:
    """Every label defect found, with counts per kind and per class."""

    issues: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {k: [] for k in ISSUE_KINDS})
    class_counts: Counter = dataclasses.field(default_factory=Counter)
    frames: int = 0
    objects: int = 0

    def add(self, kind: str, where: str, detail: str = "") -> None:
        self.issues[kind].append(f"{where}: {detail}" if detail else where)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.issues.items() if v}

    @property
    def clean(self) -> bool:
        return not self.counts()

    def summary(self) -> str:
        lines = [f"Label check: {self.frames} frames, {self.objects} objects; per class: "
                 + (", ".join(f"{c}: {n}" for c, n in sorted(self.class_counts.items())) or "none")]
        if self.clean:
            lines.append("  no label problems found")
        for kind, where in self.issues.items():
            if not where:
                continue
            lines.append(f"  {len(where)} x {ISSUE_KINDS[kind]} [{kind}]")
            lines += [f"    {w}" for w in where[:_EXAMPLES_PER_KIND]]
            if len(where) > _EXAMPLES_PER_KIND:
                lines.append(f"    ... and {len(where) - _EXAMPLES_PER_KIND} more (all in validation_report.json)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"frames": self.frames, "objects": self.objects,
                "class_counts": dict(sorted(self.class_counts.items())),
                "issue_counts": self.counts(),
                "issues": {k: v for k, v in self.issues.items() if v},
                "issue_meanings": {k: ISSUE_KINDS[k] for k in self.counts()}}

    def write_json(self, path: str | os.PathLike) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def fail_if_strict(self, strict: bool) -> None:
        if strict and not self.clean:
            counts = ", ".join(f"{k}: {n}" for k, n in self.counts().items())
            raise TaoctlError(f"--strict: label problems found ({counts}); see the report above")


def parse_label_file(path: str | os.PathLike, width: int | None, height: int | None, report: LabelReport,
                     class_mapping: Mapping[str, str] | None = None, lower: bool = False,
                     with_score: bool = False) -> list[KittiObject]:
    """Objects of one KITTI label file, boxes clipped to ``width`` x ``height`` when given.

    ``with_score``: the file holds detections, 16 fields, the last one the confidence.

    ``lower`` lower-cases class names, as TAO's converters do. With ``class_mapping`` (source →
    target), a class that is not a key is reported ``unknown_class`` but still returned, so
    counts and conversions keep it; the consumer decides whether to train on it.
    """
    objects = []
    try:
        with open(path, "rb") as handle:
            # Bounded: a label file that is a device or a runaway file must not fill memory.
            data = handle.read(MAX_LABEL_BYTES + 1)
    except OSError as exc:
        report.add("missing_label", str(path), exc.strerror or str(exc))
        return objects
    if len(data) > MAX_LABEL_BYTES:
        raise TaoctlError(f"{path}: label file larger than {MAX_LABEL_BYTES // 2**20} MiB "
                          "(a KITTI label file holds one short line per object)")
    text = data.decode("utf-8", errors="replace")
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        expected = 16 if with_score else 15
        if len(fields) != expected:
            report.add("field_count", where, f"{len(fields)} fields, expected {expected}")
            continue
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            bad = next(v for v in fields[1:] if not is_number(v))
            report.add("non_numeric", where, repr(bad))
            continue
        if not all(np.isfinite(values)):
            report.add("non_numeric", where, "nan/inf")
            continue
        name = fields[0].lower() if lower else fields[0]
        box = check_box(report, where, values[3:7], width, height)
        if box is None:
            continue
        if class_mapping and name not in class_mapping:
            report.add("unknown_class", where, repr(name))
        report.class_counts[name] += 1
        report.objects += 1
        objects.append(KittiObject(name, box, truncation=values[0], occlusion=int(values[1]),
                                   alpha=values[2], dimensions=tuple(values[7:10]),
                                   location=tuple(values[10:13]), rotation_y=values[13], line=number,
                                   score=values[14] if with_score else None))
    return objects


def check_box(report: LabelReport, where: str, box, width: int | None,
              height: int | None) -> tuple[float, float, float, float] | None:
    """An (x1, y1, x2, y2) box clipped to ``width`` x ``height``, or None when it is unusable.

    Zero-area, inverted and wholly outside boxes are reported at ``where`` and give None; a box
    reaching outside the image is reported and clipped. Without a size nothing is clipped.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if x1 == x2 or y1 == y2:
        report.add("zero_area", where, f"box {x1:g} {y1:g} {x2:g} {y2:g}")
        return None
    if x1 > x2 or y1 > y2:
        report.add("inverted_box", where, f"box {x1:g} {y1:g} {x2:g} {y2:g}")
        return None
    if width is None or height is None or (x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height):
        return x1, y1, x2, y2
    cx1, cy1 = min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height))
    cx2, cy2 = min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))
    if cx1 >= cx2 or cy1 >= cy2:
        report.add("outside_image_dropped", where, f"box {x1:g} {y1:g} {x2:g} {y2:g} in {width}x{height}")
        return None
    report.add("outside_image", where, f"box {x1:g} {y1:g} {x2:g} {y2:g} clipped to {width}x{height}")
    return cx1, cy1, cx2, cy2


def image_size(path: str | os.PathLike, verify: bool = True) -> tuple[int, int]:
    """(width, height) from the header; ``verify`` also checks the file's structure. Raises OSError."""
    try:
        with Image.open(path) as image:
            size = image.size
            if verify:
                image.verify()
    except (UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise OSError(str(exc)) from exc
    return size


def find_images(folder: str | os.PathLike, extension: str | None = None) -> dict[str, Path]:
    """{stem: path} of the images in ``folder``; ``extension`` ('.png' or 'png') restricts the suffix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaoctlError(f"image folder {folder} does not exist")
    if extension:
        # A spec's image_extension is matched exactly: frame ids become file names by adding it, as in TAO.
        extension = extension if extension.startswith(".") else "." + extension
        return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix == extension and p.is_file()}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def read_kitti(image_dir: str | os.PathLike, label_dir: str | os.PathLike, extension: str | None = None,
               class_mapping: Mapping[str, str] | None = None, lower: bool = False,
               require_one_size: bool = False, verify_images: bool = True,
               frame_prefix: str = "", report: LabelReport | None = None,
               with_score: bool = False) -> tuple[list[Frame], LabelReport]:
    """Frames of a KITTI folder pair, sorted by stem, and the report of everything wrong with them.

    ``with_score``: the labels are detections (16 fields, the last the confidence).
    """
    report = report if report is not None else LabelReport()
    images = find_images(image_dir, extension)
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise TaoctlError(f"label folder {label_dir} does not exist")
    labels = {p.stem: p for p in sorted(label_dir.glob("*.txt"))}
    if not images:
        found = sorted({p.suffix for p in Path(image_dir).iterdir() if p.is_file()})
        hint = f" (found {', '.join(found)}; set image_extension)" if found else ""
        raise TaoctlError(f"no {extension or 'image'} files in {image_dir}{hint}")
    for stem in sorted(set(labels) - set(images)):
        report.add("missing_image", str(labels[stem]), f"no {stem}{extension or '.*'} in {image_dir}")
    frames = []
    for stem, image_path in images.items():
        if stem not in labels:
            report.add("missing_label", str(image_path), f"no {stem}.txt in {label_dir}")
            continue
        try:
            width, height = image_size(image_path, verify_images)
        except OSError as exc:
            report.add("unreadable_image", str(image_path), str(exc))
            continue
        objects = parse_label_file(labels[stem], width, height, report, class_mapping, lower, with_score)
        frame_id = f"{frame_prefix}/{stem}" if frame_prefix else stem
        frames.append(Frame(frame_id, str(image_path), width, height, objects))
    report.frames += len(frames)
    if frames:
        frames = check_sizes(frames, report, require_one_size)
    return frames, report


def check_sizes(frames: list[Frame], report: LabelReport, require_one_size: bool) -> list[Frame]:
    """Report frames whose size differs from the most common one; drop them when one size is required."""
    sizes = Counter((f.width, f.height) for f in frames)
    if len(sizes) == 1:
        return frames
    (common, _), = sizes.most_common(1)
    keep = []
    for frame in frames:
        if (frame.width, frame.height) != common:
            report.add("mixed_resolution", frame.image_path,
                       f"{frame.width}x{frame.height}, most images are {common[0]}x{common[1]}")
            if require_one_size:
                continue
        keep.append(frame)
    return keep


# --- TAO detection TFRecords ------------------------------------------------------------------

def frame_from_example(features: Mapping[str, list], image_directory: str | os.PathLike,
                       extension: str | None) -> Frame:
    """A Frame from a decoded TAO detection Example (``frame/id`` is relative to ``image_directory``)."""
    frame_id = features["frame/id"][0].decode("utf-8")
    classes = [c.decode("utf-8") for c in features.get("target/object_class", [])]
    columns = [features.get(f"target/coordinates_{k}", []) for k in ("x1", "y1", "x2", "y2")]
    truncation = features.get("target/truncation") or [0.0] * len(classes)
    occlusion = features.get("target/occlusion") or [0] * len(classes)
    objects = [KittiObject(c, (x1, y1, x2, y2), truncation=t, occlusion=o)
               for c, x1, y1, x2, y2, t, o in zip(classes, *columns, truncation, occlusion)]
    return Frame(frame_id, resolve_image(image_directory, frame_id, extension),
                 int(features["frame/width"][0]), int(features["frame/height"][0]), objects)


def resolve_image(image_directory: str | os.PathLike, frame_id: str, extension: str | None) -> str:
    """The image file of a frame id; without an extension the first existing one of the usual ones
    (lower or upper case)."""
    base = os.path.join(os.fspath(image_directory), frame_id)
    if extension:
        return base + (extension if extension.startswith(".") else "." + extension)
    for suffix in IMAGE_EXTENSIONS:
        for spelled in (suffix, suffix.upper()):
            if os.path.exists(base + spelled):
                return base + spelled
    raise TaoctlError(f"no image for frame {frame_id!r} in {image_directory} (tried {', '.join(IMAGE_EXTENSIONS)})")


def read_tfrecords(tfrecords_path, image_directory: str | os.PathLike, extension: str | None = None) -> list[Frame]:
    """Frames of the shards a ``data_sources { tfrecords_path image_directory_path }`` entry names."""
    from taoctl.engine.data.tfrecord import expand_paths, parse_example, read_records

    frames = []
    for path in expand_paths(tfrecords_path):
        for record in read_records(path):
            frames.append(frame_from_example(parse_example(record), image_directory, extension))
    return frames


def class_counts(frames: Iterable[Frame]) -> Counter:
    return Counter(c for f in frames for c in f.classes)


def load_data_source(image_directory_path: str | os.PathLike, tfrecords_path=None,
                     label_directory_path: str | os.PathLike | None = None, extension: str | None = None,
                     class_mapping: Mapping[str, str] | None = None, require_one_size: bool = False,
                     report: LabelReport | None = None) -> tuple[list[Frame], LabelReport]:
    """Frames of one training spec ``data_sources`` entry, from TFRecords or straight from KITTI.

    ``tfrecords_path`` (a glob) with ``image_directory_path``: shards written by dataset_convert
    (ours or TAO's). ``label_directory_path`` with ``image_directory_path``: raw KITTI, checked
    line by line into ``report``. Class names are lower-cased either way, as TAO's converter does.
    """
    report = report if report is not None else LabelReport()
    if tfrecords_path:
        frames = read_tfrecords(tfrecords_path, image_directory_path, extension)
        for frame in frames:
            report.class_counts.update(frame.classes)
            report.objects += len(frame.objects)
            if class_mapping:
                for obj in frame.objects:
                    if obj.cls not in class_mapping:
                        report.add("unknown_class", frame.frame_id, repr(obj.cls))
        report.frames += len(frames)
        return check_sizes(frames, report, require_one_size) if frames else frames, report
    if not label_directory_path:
        raise TaoctlError("a data source needs tfrecords_path, or label_directory_path with image_directory_path")
    frames, report = read_kitti(image_directory_path, label_directory_path, extension, class_mapping, lower=True,
                                require_one_size=require_one_size, report=report)
    return frames, report
