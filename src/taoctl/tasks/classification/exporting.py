"""The export subtask's work: .tlt -> ONNX (fp32/fp16/int8), TensorRT cache/engine, DeepStream config."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from taoctl.engine import export
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_path, write_atomic
from taoctl.tasks.classification import common


def run_export(model_path, output_file, key, experiment_spec, data_type, cal_image_dir, cal_data_file, cal_cache_file,
               batches, batch_size, max_batch_size, engine_file, gen_ds_config, classmap_json, target_opset,
               cal_method, strict) -> Path:
    experiment = None
    if experiment_spec:
        from taoctl.tasks.classification import spec as spec_module

        experiment = spec_module.load(experiment_spec)
    model, manifest = common.load_classifier(model_path, key)
    shape = tuple(manifest["input_shape"])
    normalizer = common.normalizer_from_manifest(manifest)
    interp = manifest.get("interpolation", "BILINEAR")
    classes = common.read_classmap(classmap_json) if classmap_json else common.classes_of(manifest)
    if len(classes) != len(manifest["class_map"]):
        raise TaoctlError(f"--classmap_json {classmap_json} has {len(classes)} classes, the model "
                          f"{len(manifest['class_map'])}")
    output = Path(output_file) if output_file else Path(model_path).with_suffix(".onnx")
    if output.suffix.lower() != ".onnx":
        raise TaoctlError(f"-o {output}: taoctl exports ONNX; name the output *.onnx")
    output.parent.mkdir(parents=True, exist_ok=True)

    center = bool(experiment.eval_config.enable_center_crop) if experiment is not None else True
    mode = "center" if center else "resize"
    # As in TAO, an existing --cal_data_file stands in for the image folders unless --cal_image_dir is given.
    tensorfile = read_calibration_file(cal_data_file, shape) if cal_data_file and not cal_image_dir and \
        Path(cal_data_file).exists() else None
    paths = [] if tensorfile is not None else common.image_paths(cal_image_dir, experiment)
    if tensorfile is not None:
        check_images, skipped = tensorfile[:16], []
        print(f"Read {len(tensorfile)} calibration images from {cal_data_file}", flush=True)
    else:
        check_images, skipped = common.load_image_batch(paths[:16], shape, interp, mode, strict)
    if len(check_images):
        sample = torch.from_numpy(normalizer.numpy(check_images))
        what = f"{len(check_images)} real images"
    else:
        print("Warning: no images found (pass -e or --cal_image_dir) to check the export on; using random input",
              flush=True)
        sample, what = torch.randn(4, *shape), "random input"

    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        fp32 = output if data_type == "fp32" else Path(work) / "fp32.onnx"
        diff = export.export_onnx(model, fp32, shape, sample, opset=target_opset)
        print(f"ONNX fp32 vs PyTorch on {what}: max abs diff {diff:.3g}", flush=True)
        if diff > 1e-3:
            raise TaoctlError(f"exported ONNX differs from PyTorch by {diff:.3g} (over 1e-3); not writing {output}")
        cache = None
        if data_type == "fp16":
            export.convert_fp16(fp32, output)
            diff16 = float(np.abs(export.run_onnx(output, sample.numpy()) - export.run_onnx(fp32, sample.numpy())).max())
            print(f"ONNX fp16 vs fp32: max abs diff {diff16:.3g}", flush=True)
        elif data_type == "int8":
            count = max(1, batches) * max(1, batch_size)
            if tensorfile is not None:
                images = tensorfile[:count]
            elif not paths:
                raise TaoctlError("INT8 calibration needs images: pass --cal_image_dir, --cal_data_file or -e with "
                                  "dataset paths")
            else:
                images, bad = common.load_image_sample(paths, count, shape, interp, mode, strict)
                skipped += bad
                if cal_data_file:
                    write_calibration_file(cal_data_file, images)
            cal_batches = [normalizer.numpy(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
            cache = Path(cal_cache_file) if cal_cache_file else output.with_suffix(".cal.bin")
            export.quantize_int8(fp32, output, cal_batches, cache_path=cache, method=cal_method,
                                 progress=lambda m: print(m, flush=True))
            agree = (export.run_onnx(output, sample.numpy()).argmax(1)
                     == export.run_onnx(fp32, sample.numpy()).argmax(1)).mean()
            print(f"ONNX int8 vs fp32 on {what}: top-1 agreement {agree * 100:.1f} %", flush=True)
            print(f"Wrote TensorRT calibration cache {cache}", flush=True)
    for why in skipped:
        print(f"Warning: skipped {why}", flush=True)
    print(f"Exported {data_type} ONNX model to {output}", flush=True)
    classmap_path = output.with_name("classmap.json")
    mapping = {name: i for i, name in enumerate(classes)}
    if not classmap_path.exists() or json.loads(classmap_path.read_text() or "{}") != mapping:
        if classmap_path.exists():
            classmap_path = output.with_suffix(".classmap.json")
        common.write_json(classmap_path, mapping)
    built = False
    if engine_file:
        try:
            export.build_tensorrt_engine(output, engine_file, data_type, max_batch_size, shape, cache)
            built = True
            print(f"Wrote TensorRT engine {engine_file}", flush=True)
        except TaoctlError as exc:
            print(f"Warning: {exc}", flush=True)
    if gen_ds_config:
        labels = output.parent / "labels.txt"
        write_atomic(labels, "\n".join(classes) + "\n")
        config = output.parent / "nvinfer_config.txt"
        export.deepstream_config(config, output.name, labels.name, normalizer.describe(), shape, len(classes), data_type,
                                 cal_cache=cache.name if cache else None,
                                 engine_file=Path(engine_file).name if built else None,
                                 max_batch_size=max_batch_size)
        print(f"Wrote DeepStream config {config} and {labels}", flush=True)
    return output


def write_calibration_file(path, images: np.ndarray) -> None:
    """Calibration images (uint8, N x C x H x W, not yet normalised) as one .npy, written atomically."""
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


def run_calibration_tensorfile(experiment, output, max_batches: int, use_validation_set: bool, strict: bool) -> Path:
    """Samples max_batches x batch_size_per_gpu images of the spec's training (or validation) set."""
    train = experiment.train_config
    folder = train.val_dataset_path if use_validation_set else train.train_dataset_path
    which = "val_dataset_path" if use_validation_set else "train_dataset_path"
    if not folder or not Path(folder).is_dir():
        raise TaoctlError(f"train_config.{which}: {folder or '(empty)'} is not a folder")
    paths = common.image_paths(folder, None)
    if not paths:
        raise TaoctlError(f"train_config.{which}: no images in {folder}")
    shape = common.input_shape(experiment.model_config)
    count = max(1, max_batches) * max(1, train.batch_size_per_gpu or 1)
    mode = "center" if experiment.eval_config.enable_center_crop else "resize"
    interp = common.interpolation(experiment.model_config)
    images, skipped = common.load_image_sample(paths, count, shape, interp, mode, strict)
    for why in skipped:
        print(f"Warning: skipped {why}", flush=True)
    if not len(images):
        raise TaoctlError(f"train_config.{which}: none of the sampled images in {folder} could be read")
    write_calibration_file(output, images)
    return Path(output)
