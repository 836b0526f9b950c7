"""dataset_convert for every detector: KITTI or COCO labels to TAO's detection TFRecord shards.

Follows TAO's detectnet_v2 converter (``dataio/kitti_converter_lib.py``, ``coco_converter_lib.py``,
``dataset_converter_lib.py``, ``sample_modifier.py``): the same partitions (random split with
``val_split`` percent in fold 0, or sequence-wise folds), the same seeded shuffles (Python's
``random`` seeded with 42, so the same images land in the same shard order as TAO's), the same
shard names and Example keys, class names lower-cased. Unlike TAO, every label defect is
reported with its file:line instead of being skipped in a debug log, and ``--strict`` stops
before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from taoctl.engine.data import kitti, tfrecord
from taoctl.engine.data.tfrecord import bytes_feature, float_feature, int64_feature
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_paths, write_atomic

TAO_SEED = 42  # TAO's DatasetConverter seeds Python's random with 42


def example_bytes(frame: kitti.Frame) -> bytes:
    """TAO's detection Example for one frame (the keys TAO's KITTI converter writes)."""
    objs = frame.objects
    features = {
        "frame/id": bytes_feature(frame.frame_id),
        "frame/height": int64_feature(frame.height),
        "frame/width": int64_feature(frame.width),
        "target/object_class": bytes_feature(*[o.cls for o in objs]),
        "target/truncation": float_feature(*[o.truncation for o in objs]),
        "target/occlusion": int64_feature(*[o.occlusion for o in objs]),
        "target/observation_angle": float_feature(*[o.alpha for o in objs]),
    }
    for i, key in enumerate(("x1", "y1", "x2", "y2")):
        features[f"target/coordinates_{key}"] = float_feature(*[o.box[i] for o in objs])
    for i, key in enumerate(("h", "w", "l")):
        features[f"target/world_bbox_{key}"] = float_feature(*[o.dimensions[i] for o in objs])
    for i, key in enumerate(("x", "y", "z")):
        features[f"target/world_bbox_{key}"] = float_feature(*[o.location[i] for o in objs])
    features["target/world_bbox_rot_y"] = float_feature(*[o.rotation_y for o in objs])
    return tfrecord.make_example(features)


class SampleModifier:
    """TAO's sample modifier: filter and duplicate training samples by their target classes."""

    def __init__(self, config, validation_fold: int | None, num_folds: int):
        self.filter_only = set(config.filter_samples_containing_only)
        self.dominant = list(config.dominant_target_classes)
        self.imbalance = dict(config.minimum_target_class_imbalance)
        self.num_duplicates = config.num_duplicates
        self.mapping = dict(config.source_to_target_class_mapping)
        self.validation_fold = validation_fold
        targets = set(self.mapping.values())
        for field, names in (("dominant_target_classes", self.dominant),
                             ("filter_samples_containing_only", self.filter_only)):
            unknown = sorted(set(names) - targets)
            if unknown:
                raise TaoctlError(f"sample_modifier_config.{field}: {', '.join(unknown)} not among the targets of "
                                  f"source_to_target_class_mapping ({', '.join(sorted(targets)) or 'empty'})")
        self.sample_counts = [0] * max(num_folds, 1)
        self.max_per_fold = 0
        if config.max_training_samples > 0:
            training_folds = num_folds - 1 if validation_fold is not None else num_folds
            self.max_per_fold = config.max_training_samples // max(training_folds, 1)

    def modify(self, frame: kitti.Frame, fold: int) -> list[kitti.Frame]:
        if self.validation_fold is not None and fold == self.validation_fold:
            return [frame]
        targets = [self.mapping[c] for c in frame.classes if c in self.mapping]
        if self.filter_only and len(set(targets)) == 1 and targets[0] in self.filter_only:
            frames = []
        else:
            frames = [frame]
            if self.dominant and targets:
                counts = Counter(targets)
                rare = [t for t in set(targets) if t not in self.dominant]
                if any(counts[r] > counts[d] * self.imbalance.get(r, 1.0) for r in rare for d in self.dominant):
                    frames += [frame] * self.num_duplicates
        if self.max_per_fold > 0:
            frames = frames[:max(self.max_per_fold - self.sample_counts[fold], 0)]
            self.sample_counts[fold] += len(frames)
        return frames


def _shard(partition: list, num_shards: int) -> list[list]:
    """TAO's split of a partition into shards: equal slices, the last one takes the rest."""
    num_shards = max(num_shards, 1)
    size = len(partition) // num_shards
    return [partition[i * size:(i + 1) * size if i + 1 < num_shards else len(partition)]
            for i in range(num_shards)]


def shard_path(prefix: str, fold: int, num_folds: int, shard: int, num_shards: int) -> str:
    """``PREFIX-fold-000-of-002-shard-00000-of-00010``; a count of 0 leaves its part out, as in TAO."""
    path = prefix
    if num_folds != 0:
        path = f"{path}-fold-{fold:03d}-of-{num_folds:03d}"
    if num_shards != 0:
        path = f"{path}-shard-{shard:05d}-of-{num_shards:05d}"
    return path


def earlier_shards(prefix: str) -> list[str]:
    """Absolute paths of the files named as this prefix's shards, for any fold and shard counts.

    Every converter (TAO's and this one) names its folds, so the bare prefix is never a shard.
    """
    folder, name = os.path.split(os.path.abspath(prefix))
    pattern = re.compile(re.escape(name) + r"-fold-\d{3}-of-\d{3}(-shard-\d{5}-of-\d{5})?")
    return sorted(entry.path for entry in os.scandir(folder) if pattern.fullmatch(entry.name) and entry.is_file())


# --- KITTI ------------------------------------------------------------------------------------

def _kitti_partitions(config, frames: list[kitti.Frame], root: Path) -> list[list[kitti.Frame]]:
    mode = config.partition_mode or "sequence"  # TAO's KITTIConverter default
    num = config.num_partitions
    by_stem = {Path(f.frame_id).name: f for f in frames}
    rng = random.Random(TAO_SEED)
    if mode == "random":
        num = num or 2
        if num != 2:
            raise TaoctlError(f"kitti_config.num_partitions is {num}; partition_mode \"random\" makes exactly 2 "
                              f"(fold 0: validation, fold 1: training)")
        if not 0 <= config.val_split < 100:
            raise TaoctlError(f"kitti_config.val_split is {config.val_split:g}; it is a percentage, 0 <= val_split < 100")
        stems = sorted(by_stem)
        n_val = int(config.val_split / 100.0 * len(stems))
        partitions = [[by_stem[s] for s in stems[:n_val]], [by_stem[s] for s in stems[n_val:]]]
        for part in partitions:  # TAO shuffles in _partition ...
            rng.shuffle(part)
    elif mode == "sequence":
        if not config.kitti_sequence_to_frames_file:
            raise TaoctlError('kitti_config.kitti_sequence_to_frames_file is required with partition_mode "sequence" '
                              '(or use partition_mode: "random" with val_split)')
        map_path = root / config.kitti_sequence_to_frames_file
        try:
            sequences = json.loads(map_path.read_text())
        except (OSError, ValueError) as exc:
            raise TaoctlError(f"kitti_config.kitti_sequence_to_frames_file {map_path}: {exc}") from None
        unknown = [f for frames_ in sequences.values() for f in frames_ if str(f) not in by_stem]
        if unknown:
            raise TaoctlError(f"{map_path}: {len(unknown)} frame(s) without a usable image and label, "
                              f"e.g. {unknown[0]!r}")
        num = num or 1
        if num > 1:
            partitions = [[] for _ in range(num)]
            ordered = sorted(sequences.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            for i, (_, ids) in enumerate(ordered):
                partitions[i % num].extend(by_stem[str(f)] for f in ids)
            partitions = partitions[::-1]  # TAO reverses to match its older splitter's fold order
        else:
            partitions = [[by_stem[str(f)] for ids in sequences.values() for f in ids]]
    else:
        raise TaoctlError(f'kitti_config.partition_mode is "{mode}"; use "random" or "sequence"')
    for part in partitions:  # ... and again in convert()
        rng.shuffle(part)
    return partitions


def _read_kitti(config, report: kitti.LabelReport, class_mapping) -> tuple[list[list[kitti.Frame]], list[int]]:
    if not config.root_directory_path:
        raise TaoctlError("kitti_config.root_directory_path is not set")
    root = Path(config.root_directory_path)
    image_dir = root / (config.image_dir_name or "")
    label_dir = root / (config.label_dir_name or "")
    extension = config.image_extension or ".png"  # TAO's default
    frames, _ = kitti.read_kitti(image_dir, label_dir, extension, class_mapping=class_mapping, lower=True,
                                 frame_prefix=config.image_dir_name, report=report)
    partitions = _kitti_partitions(config, frames, root)
    return partitions, [config.num_shards] * len(partitions)


# --- COCO -------------------------------------------------------------------------------------

def _read_coco(config, report: kitti.LabelReport, class_mapping) -> tuple[list[list[kitti.Frame]], list[int]]:
    root = Path(config.root_directory_path)
    if len(config.img_dir_names) != len(config.annotation_files):
        raise TaoctlError(f"coco_config: {len(config.img_dir_names)} img_dir_names but "
                          f"{len(config.annotation_files)} annotation_files; give one folder per annotation file")
    num = config.num_partitions or len(config.annotation_files)
    if num != len(config.annotation_files):
        raise TaoctlError(f"coco_config.num_partitions is {num} but there are {len(config.annotation_files)} "
                          f"annotation_files (one partition each)")
    shards = list(config.num_shards) or [0] * num
    if len(shards) != num:
        raise TaoctlError(f"coco_config.num_shards has {len(shards)} values for {num} partitions")
    partitions = []
    categories: dict | None = None
    for img_dir, ann_name in zip(config.img_dir_names, config.annotation_files):
        ann_path = root / ann_name
        try:
            data = json.loads(ann_path.read_text())
        except FileNotFoundError:
            raise TaoctlError(f"coco_config.annotation_files: {ann_path} does not exist") from None
        except ValueError as exc:
            raise TaoctlError(f"{ann_path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise TaoctlError(f'{ann_path}: not a COCO annotation file (an object with "images", "annotations", '
                              f'"categories")')
        for key in ("images", "annotations", "categories"):
            if not data.get(key) or not isinstance(data[key], list):
                raise TaoctlError(f'{ann_path}: "{key}" is missing, empty or not a list')
        cats = {}
        for index, category in enumerate(data["categories"]):
            if (not isinstance(category, dict) or not isinstance(category.get("id"), (int, str))
                    or not isinstance(category.get("name"), str)):
                raise TaoctlError(f'{ann_path}: categories[{index}] needs an "id" and a "name"')
            cats[category["id"]] = category["name"].replace(" ", "")
        if categories is not None and sorted(categories) != sorted(cats):
            raise TaoctlError(f"{ann_path}: its categories differ from the first annotation file's")
        categories = cats
        images = []
        for index, image in enumerate(data["images"]):
            problem = _coco_image_problem(image)
            if problem:
                report.add("field_count", f"{ann_path}:images[{index}]", problem)
            else:
                images.append(image)
        image_ids = {image["id"] for image in data["images"]
                     if isinstance(image, dict) and isinstance(image.get("id"), (int, str))}
        anns_by_image: dict = {}
        for index, ann in enumerate(data["annotations"]):
            where = f"{ann_path}:annotations[{index}]"
            if isinstance(ann, dict) and "id" in ann:
                where += f", annotation id {ann['id']}"
            problem = _coco_annotation_problem(ann, image_ids)
            if problem:
                kind, detail = problem
                report.add(kind, where, detail)
            else:
                anns_by_image.setdefault(ann["image_id"], []).append((where, ann))
        frames = []
        for image in images:
            image_path = root / img_dir / image["file_name"]
            if not image_path.is_file():
                report.add("missing_image", f"{ann_path}:image id {image['id']}", f"no {image_path}")
                continue
            width, height = int(image["width"]), int(image["height"])
            objects = []
            for where, ann in anns_by_image.get(image["id"], []):
                x, y, w, h = (float(v) for v in ann["bbox"])
                if ann.get("category_id") not in cats:
                    report.add("unknown_class", where, f"category_id {ann.get('category_id')}")
                    continue
                name = cats[ann["category_id"]].lower()
                box = kitti.check_box(report, where, (x, y, x + w, y + h), width, height)
                if box is None:
                    continue
                if class_mapping and name not in class_mapping:
                    report.add("unknown_class", where, repr(name))
                report.class_counts[name] += 1
                report.objects += 1
                objects.append(kitti.KittiObject(name, box))
            stem = image["file_name"].rsplit(".", 1)[0]
            frames.append(kitti.Frame(f"{img_dir}/{stem}", str(image_path), width, height, objects))
        report.frames += len(frames)
        partitions.append(frames)
    return partitions, shards


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coco_image_problem(image) -> str | None:
    """Why a COCO ``images`` entry cannot be used, or None."""
    if not isinstance(image, dict):
        return "not an object"
    missing = [key for key in ("id", "file_name", "width", "height") if key not in image]
    if missing:
        return "no " + ", ".join(f'"{key}"' for key in missing)
    if not isinstance(image["id"], (int, str)):
        return f'"id" {json.dumps(image["id"])} is not a number or a string'
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        return f'"file_name" {image["file_name"]!r} is not a file name'
    if not all(_is_finite_number(image[key]) and image[key] > 0 for key in ("width", "height")):
        return f'size {image["width"]!r} x {image["height"]!r} is not two positive numbers'
    return None


def _coco_annotation_problem(ann, image_ids: set) -> tuple[str, str] | None:
    """Why a COCO ``annotations`` entry cannot be used, as (issue kind, detail), or None."""
    if not isinstance(ann, dict):
        return "field_count", "not an object"
    missing = [key for key in ("bbox", "image_id") if key not in ann]
    if missing:
        return "field_count", "no " + ", ".join(f'"{key}"' for key in missing)
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        return "field_count", f'"bbox" {json.dumps(bbox)} is not [x, y, width, height]'
    if not all(_is_finite_number(v) for v in bbox):
        return "non_numeric", f'"bbox" {json.dumps(bbox)} is not 4 finite numbers'
    if "category_id" in ann and not isinstance(ann["category_id"], (int, str)):
        return "non_numeric", f'"category_id" {json.dumps(ann["category_id"])} is not a number or a string'
    if not isinstance(ann["image_id"], (int, str)) or ann["image_id"] not in image_ids:
        return "missing_image", f"image_id {json.dumps(ann['image_id'])} names no entry of \"images\""
    return None


# --- the conversion ---------------------------------------------------------------------------

def convert(spec, output_filename: str, validation_fold: int | None = None, results_dir: str | None = None,
            strict: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Check the labels, write the shards, print TAO's statistics; returns the validation report dict."""
    which = spec.WhichOneof("convert_config_type")
    if which is None:
        raise TaoctlError("the dataset_convert spec sets neither kitti_config nor coco_config")
    class_mapping = dict(spec.target_class_mapping) or None
    report = kitti.LabelReport()
    if which == "kitti_config":
        partitions, shards = _read_kitti(spec.kitti_config, report, class_mapping)
    else:
        partitions, shards = _read_coco(spec.coco_config, report, class_mapping)
    num_folds = len(partitions)
    if validation_fold is not None and not 0 <= validation_fold < num_folds:
        raise TaoctlError(f"-f/--validation_fold {validation_fold}: the spec makes {num_folds} fold(s), 0..{num_folds - 1}")

    echo(report.summary())
    report_dir = Path(results_dir) if results_dir else Path(output_filename).resolve().parent
    report_path = report_dir / "validation_report.json"
    report.write_json(report_path)
    echo(f"Validation report: {report_path}")
    report.fail_if_strict(strict)
    if not any(partitions):
        raise TaoctlError("no usable frames to convert; see the report above")

    modifier = SampleModifier(spec.sample_modifier_config, validation_fold, num_folds)
    output_filename = os.fspath(output_filename)
    Path(output_filename).resolve().parent.mkdir(parents=True, exist_ok=True)
    total = Counter()
    written = []
    folds = []
    # Every shard appears at the end or none does (a full disk leaves the old shards as they were);
    # then the prefix's shards this run did not write go, so a reader's glob never mixes two runs.
    with atomic_paths() as stage:
        for fold, (partition, num_shards) in enumerate(zip(partitions, shards)):
            fold_count = Counter()
            frames_written = 0
            for index, shard in enumerate(_shard(partition, num_shards)):
                path = shard_path(output_filename, fold, num_folds, index, num_shards)
                with tfrecord.TFRecordWriter(path, staging=stage) as writer:
                    for frame in shard:
                        for sample in modifier.modify(frame, fold):
                            writer.write(example_bytes(sample))
                            fold_count.update(sample.classes)
                            frames_written += 1
                written.append(path)
            role = "" if validation_fold is None else (" (validation)" if fold == validation_fold else " (training)")
            echo(f"Fold {fold}{role}: {frames_written} frames. Wrote the following numbers of objects:")
            echo("\n".join(f"  {c}: {n}" for c, n in sorted(fold_count.items())) or "  none")
            folds.append({"fold": fold, "frames": frames_written, "objects": dict(sorted(fold_count.items()))})
            total += fold_count
    for stale in sorted(set(earlier_shards(output_filename)) - {os.path.abspath(p) for p in written}):
        os.remove(stale)
        echo(f"Removed {stale}, a shard of an earlier conversion to this prefix")
    echo("Cumulative object statistics:")
    echo("\n".join(f"  {c}: {n}" for c, n in sorted(total.items())) or "  none")
    echo("Class map.\nLabel in GT: Label in tfrecords file")
    echo("\n".join(f"  {c}: {c}" for c in sorted(report.class_counts)))
    echo("For the dataset_config in the experiment_spec, please use labels in the tfrecords file, "
         "while writing the classmap.")
    echo(f"Wrote {len(written)} TFRecord shard(s): {written[0]}{' ...' if len(written) > 1 else ''}")
    result = report.to_dict() | {"folds": folds, "shards": written}
    write_atomic(report_path, json.dumps(result, indent=2) + "\n")
    return result
