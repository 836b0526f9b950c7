"""A detector spec's ``dataset_config`` -> training and validation frames (TAO's YOLO/SSD/RetinaNet layout).

``data_sources`` entries are dataset_convert's TFRecords (``tfrecords_path`` glob with
``image_directory_path``) or raw KITTI (``label_directory_path`` with ``image_directory_path``).
Validation is ``validation_data_sources`` when the spec has any; otherwise the TFRecord shards
whose name carries ``-fold-<validation_fold>-of-`` (dataset_convert's naming; proto3 cannot tell
fold 0 from unset, so fold 0 is the default, as in TAO's sample specs). Raw KITTI sources have
no folds: without ``validation_data_sources`` such a run has no validation set.
Classes are lower-cased and renamed by ``target_class_mapping``; objects of unmapped classes
are dropped. The class list is the mapping's target names, sorted (TAO's YOLO order).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping

from taoctl.engine.data import kitti
from taoctl.engine.data.tfrecord import expand_paths
from taoctl.errors import TaoctlError

_FOLD = re.compile(r"-fold-(\d{3})-of-(\d{3})")


@dataclasses.dataclass
class DetectionFrames:
    class_names: list[str]
    train: list[kitti.Frame]
    val: list[kitti.Frame]
    report: kitti.LabelReport
    folds: list[int]  # the folds the data sources' TFRecord shards hold


def class_mapping(target_class_mapping: Mapping[str, str], field: str = "dataset_config.target_class_mapping"
                  ) -> dict[str, str]:
    mapping = {str(k).lower(): str(v).lower() for k, v in target_class_mapping.items()}
    if not mapping:
        raise TaoctlError(f"{field} is empty: map each label class to the class to detect "
                          f"(target_class_mapping {{ key: \"car\" value: \"car\" }})")
    return mapping


def class_names(mapping: Mapping[str, str]) -> list[str]:
    return sorted(set(mapping.values()))


def image_extension(dataset_config) -> str | None:
    extension = dataset_config.image_extension or None
    return "." + extension if extension and not extension.startswith(".") else extension


def load_frames(dataset_config, *, strict: bool = False, echo: Callable[[str], None] = print) -> DetectionFrames:
    """Frames of a spec's ``dataset_config`` (``data_sources``, ``validation_data_sources``, ``validation_fold``,
    ``target_class_mapping``, ``image_extension``), objects renamed to the target classes."""
    mapping = class_mapping(dataset_config.target_class_mapping)
    if not dataset_config.data_sources:
        raise TaoctlError("dataset_config.data_sources is empty: add TFRecords (tfrecords_path + image_directory_path) "
                          "or KITTI folders (label_directory_path + image_directory_path)")
    validation = [(f"dataset_config.validation_data_sources[{i}]", source)
                  for i, source in enumerate(dataset_config.validation_data_sources)]
    return split_frames([(f"dataset_config.data_sources[{i}]", s) for i, s in enumerate(dataset_config.data_sources)],
                        validation, None if validation else dataset_config.validation_fold, mapping,
                        class_names(mapping), image_extension(dataset_config), strict=strict, echo=echo,
                        classes_field="dataset_config.target_class_mapping")


def split_frames(sources, validation_sources, validation_fold: int | None, mapping: Mapping[str, str],
                 names: list[str], extension: str | None, *, strict: bool, echo: Callable[[str], None],
                 classes_field: str) -> DetectionFrames:
    """Training and validation frames of ``(field, data source)`` pairs: the shards of ``validation_fold`` and
    every ``validation_sources`` frame validate, the rest trains; objects of a class ``mapping`` has are renamed,
    the others, and those mapped to a class outside ``names``, dropped. Every one of ``names`` (the spec's
    ``classes_field``) needs training objects."""
    report = kitti.LabelReport()
    train, val, folds = [], [], set()
    for field, source in sources:
        for frames, fold in _source_frames(source, field, extension, mapping, report):
            if fold is not None:
                folds.add(fold)
            (val if validation_fold is not None and fold == validation_fold else train).extend(frames)
    for field, source in validation_sources:
        for frames, _ in _source_frames(source, field, extension, mapping, report):
            val.extend(frames)
    echo(report.summary())
    report.fail_if_strict(strict)
    if not train:
        why = (f" (every shard is in validation_fold {validation_fold}; the shards hold folds {sorted(folds)})"
               if validation_fold is not None else "")
        raise TaoctlError(f"dataset_config.data_sources: no training frames{why}")
    kept = set(names)
    train = [_renamed(f, mapping, kept) for f in train]
    val = [_renamed(f, mapping, kept) for f in val]
    counts = kitti.class_counts(train)
    missing = [name for name in names if not counts[name]]
    if missing:
        raise TaoctlError(f"{classes_field}: no training objects of {', '.join(missing)} "
                          f"(the training labels have {', '.join(sorted(counts)) or 'no objects'})")
    return DetectionFrames(names, train, val, report, sorted(folds))


def _source_frames(source, field: str, extension, mapping, report):
    """[(frames, fold or None)] of one data source: one entry per TFRecord shard, or one for a KITTI folder pair."""
    image_dir = source.image_directory_path
    if not image_dir or not os.path.isdir(image_dir):
        raise TaoctlError(f"{field}.image_directory_path {image_dir!r} is not a folder")
    if source.tfrecords_path:
        try:
            shards = expand_paths(source.tfrecords_path)
        except TaoctlError as exc:
            raise TaoctlError(f"{field}.tfrecords_path: {exc}") from None
        out = []
        for shard in shards:
            frames, _ = kitti.load_data_source(image_dir, shard, extension=extension, class_mapping=mapping,
                                               report=report)
            missing = [f.image_path for f in frames if not os.path.isfile(f.image_path)]
            if missing:
                raise TaoctlError(f"{field}.image_directory_path: {len(missing)} image(s) of {shard} missing, e.g. "
                                  f"{missing[0]} (check image_directory_path and dataset_config.image_extension)")
            match = _FOLD.search(os.path.basename(shard))
            out.append((frames, int(match.group(1)) if match else None))
        return out
    if not getattr(source, "label_directory_path", ""):  # DetectNet_v2's data sources are TFRecords only
        either = " or label_directory_path" if hasattr(source, "label_directory_path") else ""
        raise TaoctlError(f"{field}.tfrecords_path is not set (the TFRecords written by dataset_convert{either})")
    frames, _ = kitti.load_data_source(image_dir, label_directory_path=source.label_directory_path,
                                       extension=extension, class_mapping=mapping, report=report)
    return [(frames, None)]


def _renamed(frame: kitti.Frame, mapping: Mapping[str, str], names) -> kitti.Frame:
    objects = [dataclasses.replace(o, cls=mapping[o.cls]) for o in frame.objects if mapping.get(o.cls) in names]
    return dataclasses.replace(frame, objects=objects)


def kitti_folder_frames(image_dir, label_dir, mapping: Mapping[str, str], names=None) -> list[kitti.Frame]:
    """Frames of a KITTI folder pair (``evaluate -i -l``), renamed by the spec's mapping (objects mapped to a
    class outside ``names``, when given, dropped)."""
    frames, _ = kitti.read_kitti(image_dir, label_dir, class_mapping=mapping, lower=True)
    if not frames:
        raise TaoctlError(f"no labelled images in {image_dir} with labels in {label_dir}")
    names = set(mapping.values()) if names is None else set(names)
    return [_renamed(f, mapping, names) for f in frames]
