"""Evaluation and inference over .tlt or .onnx classifiers (shared by evaluate, inference, export, bench)."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from taoctl.engine.data import imagefolder
from taoctl.engine.metrics.classification import format_report, save_confusion_png
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic
from taoctl.tasks.classification import common
from taoctl.tasks.classification.training import evaluate_arrays


def open_predictor(experiment, model_path, key, classmap=None, threads=None) -> common.Predictor:
    """A Predictor; an ONNX model takes shape/preprocessing from the spec, classes from -cm or beside it."""
    if str(model_path).lower().endswith(".onnx"):
        shape = common.input_shape(experiment.model_config)
        normalizer = common.normalizer_from_spec(experiment.train_config, shape[0])
        if classmap is None:
            beside = Path(model_path).with_name("classmap.json")
            classmap = beside if beside.exists() else None
        classes = common.read_classmap(classmap) if classmap else None
        return common.Predictor(model_path, key, normalizer, shape, classes, common.interpolation(experiment.model_config),
                                threads=threads)
    predictor = common.Predictor(model_path, key, threads=threads)
    if classmap:
        names = common.read_classmap(classmap)
        if names != predictor.classes:
            raise TaoctlError(f"classmap {classmap} ({names}) does not match the model's classes {predictor.classes}")
    return predictor


def evaluate_model(experiment, model_path, key, data, out_dir: Path, batch_size=None, classmap=None, strict=False,
                   quiet=False) -> dict:
    ec = experiment.eval_config
    predictor = open_predictor(experiment, model_path, key, classmap)
    mode = "center" if ec.enable_center_crop else "resize"
    index = imagefolder.scan_image_folder(data, predictor.classes, what="eval_config.eval_dataset_path")
    arrays, labels, _ = imagefolder.cache_images(index, predictor.shape[1:], predictor.shape[0], mode, predictor.interp,
                                                 threads=common.cpu_threads())
    summary = index.summary()
    if summary:
        print("Warning: " + summary, flush=True)
    index.check(strict)
    batch = int(batch_size or ec.batch_size or 32)
    top_k = int(ec.top_k or 1)
    started = time.perf_counter()
    meter = evaluate_arrays(predictor.log_probs, arrays, labels, len(predictor.classes), batch, top_k)
    seconds = time.perf_counter() - started
    report = meter.report(predictor.classes)
    report.update({"model": str(model_path), "dataset": str(data), "seconds": seconds,
                   "images_per_second": len(arrays) / max(seconds, 1e-9)})
    text = format_report(report)
    if not quiet:
        print(text, flush=True)
        print(f"({len(arrays)} images in {seconds:.2f} s, {report['images_per_second']:.1f} images/s)", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(out_dir / "results.json", report)
    write_atomic(out_dir / "evaluation.txt", text + "\n")
    save_confusion_png(report, out_dir / "confusion_matrix.png")
    if not quiet:
        print(f"Wrote {out_dir / 'results.json'}, {out_dir / 'confusion_matrix.png'}", flush=True)
    return report


def list_images(image=None, image_dir=None) -> list[str]:
    if bool(image) == bool(image_dir):
        raise TaoctlError("pass exactly one of -i/--image and -d/--image_dir")
    if image:
        if not Path(image).is_file():
            raise TaoctlError(f"-i {image}: no such image file")
        return [str(image)]
    folder = Path(image_dir)
    if not folder.is_dir():
        raise TaoctlError(f"-d {image_dir}: not a folder")
    files = sorted(str(p) for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in imagefolder.IMAGE_EXTENSIONS)
    if not files:
        raise TaoctlError(f"-d {image_dir}: no images (extensions {', '.join(imagefolder.IMAGE_EXTENSIONS)})")
    return files


def infer(predictor: common.Predictor, paths: list[str], batch_size: int, center_crop: bool):
    """(path, label, confidence) per image; unreadable files are reported and skipped."""
    mode = "center" if center_crop else "resize"
    rows, skipped = [], []
    for start in range(0, len(paths), batch_size):
        arrays, kept = [], []
        for path in paths[start:start + batch_size]:
            try:
                arrays.append(imagefolder.load_image(path, predictor.shape[1:], predictor.shape[0], mode, predictor.interp))
                kept.append(path)
            except TaoctlError as exc:
                skipped.append((path, str(exc)))
        if not arrays:
            continue
        probs = np.exp(predictor.log_probs(np.stack([a.transpose(2, 0, 1) for a in arrays])))
        for path, p in zip(kept, probs):
            best = int(p.argmax())
            rows.append((path, predictor.classes[best], float(p[best])))
    return rows, skipped


def write_result_csv(path: Path, rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "confidence"])
    for image, label, confidence in rows:
        writer.writerow([image, label, f"{confidence:.6f}"])
    write_atomic(path, buffer.getvalue())
