"""Deployment exports: ONNX (fp32/fp16), calibrated INT8 (QDQ ONNX + TensorRT cache), TensorRT engines.

* :func:`export_onnx` writes an ONNX model with a dynamic batch axis and checks it against
  PyTorch on real inputs (the max abs difference is returned for the caller to print).
* :func:`quantize_int8` runs static post-training quantisation with onnxruntime (QDQ format,
  per-channel weights) from calibration batches, and writes a TensorRT calibration cache
  (``TRT-<ver>-EntropyCalibration2`` text with each tensor's scale as big-endian float hex)
  from the same activation ranges, so TensorRT can build an INT8 engine on the target.
* :func:`build_tensorrt_engine` builds an engine when ``tensorrt`` imports; otherwise it
  raises a TaoctlError saying exactly that (the caller keeps the ONNX).

Everything is written to a temporary file first and moved into place.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_path, write_atomic

# TensorRT 8.6's calibration-cache header; TensorRT reads the ranges regardless of the version digits.
TRT_CACHE_HEADER = "TRT-8601-EntropyCalibration2"


class _WithSoftmax(nn.Module):
    """Exported classifiers output probabilities, as TAO's (``predictions/Softmax``) do."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=1)


def export_onnx(model: nn.Module, path, input_shape: tuple[int, int, int], sample: torch.Tensor | None = None,
                softmax: bool = True, opset: int | None = None, input_name: str = "input_1",
                output_name: str = "predictions") -> float:
    """Export ``model`` (eval mode, CPU) to ``path``; return max |onnx - torch| on ``sample``.

    ``sample`` is a normalised N x C x H x W batch (real images); random data when None.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    wrapped = _WithSoftmax(model) if softmax else model
    if sample is None:
        sample = torch.randn(2, *input_shape)
    dummy = sample[:2] if len(sample) >= 2 else torch.cat([sample, sample])
    import warnings

    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped, (dummy,), dynamo=True, input_names=[input_name], output_names=[output_name],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=opset,
            external_data=False, verbose=False)
        program.save(str(tmp))
    with torch.no_grad():
        expected = wrapped(sample).numpy()
    actual = run_onnx(path, sample.numpy())
    return float(np.abs(actual - expected).max())


def ort_session(path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise TaoctlError(f"{path}: onnxruntime cannot load it ({exc})") from exc


def run_onnx(path_or_session, batch: np.ndarray) -> np.ndarray:
    session = ort_session(path_or_session) if isinstance(path_or_session, (str, os.PathLike)) else path_or_session
    name = session.get_inputs()[0].name
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    return session.run(None, {name: batch.astype(dtype)})[0].astype(np.float32)


def onnx_input_shape(path) -> tuple[int | None, ...]:
    session = ort_session(path)
    return tuple(d if isinstance(d, int) else None for d in session.get_inputs()[0].shape)


def convert_fp16(src, dst) -> None:
    """fp16 weights and compute, fp32 inputs/outputs (onnxruntime's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))


class _Reader:
    """onnxruntime CalibrationDataReader over a list of batches (rewindable)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name = input_name
        self.batches = batches
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self):
        self.position = 0


def quantize_int8(fp32_path, int8_path, batches: Iterable[np.ndarray], cache_path=None,
                  method: str = "minmax", progress: Callable[[str], None] = print) -> dict:
    """Calibrated static INT8 (QDQ) of an fp32 ONNX model; returns the activation ranges used.

    ``batches``: normalised float32 calibration batches. ``method``: minmax, entropy or percentile.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise TaoctlError(f"unknown calibration method {method}; use {', '.join(methods)}")
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
    if not batches:
        raise TaoctlError("INT8 calibration needs at least one batch of images")
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        progress(f"Calibrating on {sum(len(b) for b in batches)} images ({method}) ...")
        calibrator = create_calibrator(str(prepared), calibrate_method=methods[method],
                                       augmented_model_path=str(Path(work) / "augmented.onnx"))
        calibrator.collect_data(_Reader(input_name, batches))
        ranges = {name: (float(np.asarray(r.range_value[0] if hasattr(r, "range_value") else r[0]).item()),
                         float(np.asarray(r.range_value[1] if hasattr(r, "range_value") else r[1]).item()))
                  for name, r in calibrator.compute_data().data.items()}
        del calibrator
        tmp = Path(work) / "int8.onnx"
        quantize_static(str(prepared), str(tmp), _Reader(input_name, batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
        os.replace(tmp, int8_path)
    if cache_path:
        write_trt_cache(cache_path, ranges)
    return ranges


def write_trt_cache(path, ranges: dict[str, tuple[float, float]]) -> None:
    """TensorRT calibration cache: one ``tensor: <scale as big-endian float32 hex>`` per line."""
    lines = [TRT_CACHE_HEADER]
    for name, (low, high) in sorted(ranges.items()):
        scale = max(abs(low), abs(high)) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    write_atomic(path, "\n".join(lines) + "\n")


def read_trt_cache(path) -> dict[str, float]:
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise TaoctlError(f"{path}: not a TensorRT calibration cache")
    out = {}
    for line in lines[1:]:
        name, _, value = line.rpartition(": ")
        out[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    return out


def build_tensorrt_engine(onnx_path, engine_path, data_type: str = "fp32", max_batch_size: int = 16,
                          input_shape: tuple[int, int, int] | None = None, cal_cache=None) -> None:
    """Build a serialized TensorRT engine; TaoctlError when ``tensorrt`` does not import."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TaoctlError(f"TensorRT engine not built: the tensorrt Python package does not import here "
                          f"({exc}); the ONNX model {onnx_path} is kept, build the engine on the target with "
                          f"trtexec --onnx={onnx_path}") from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TaoctlError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if data_type == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif data_type == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # the QDQ nodes carry the scales
    profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    shape = tuple(input_shape or tuple(tensor.shape)[1:])
    profile.set_shape(tensor.name, (1, *shape), (max(1, max_batch_size // 2), *shape), (max_batch_size, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TaoctlError(f"TensorRT failed to build an engine from {onnx_path}")
    write_atomic(engine_path, bytes(serialized))


def deepstream_config(path, onnx_file: str, labels_file: str, normalizer: dict, input_shape: tuple[int, int, int],
                      num_classes: int, data_type: str, cal_cache: str | None = None,
                      engine_file: str | None = None, max_batch_size: int = 1) -> None:
    """DeepStream nvinfer config for a classifier, with labels.txt written by the caller.

    DeepStream computes ``net-scale-factor * (pixel - offset)``, one scale for all channels:
    per-channel std (torch mode) is approximated by its mean.
    """
    scale = 1.0 / float(np.mean(normalizer["std"]))
    network_mode = {"fp32": 0, "int8": 1, "fp16": 2}[data_type]
    lines = ["[property]", "gpu-id=0", f"net-scale-factor={scale:.8g}",
             "offsets=" + ";".join(f"{m:.4f}" for m in normalizer["mean"]),
             f"onnx-file={onnx_file}", f"labelfile-path={labels_file}",
             f"infer-dims={';'.join(str(d) for d in input_shape)}",
             f"batch-size={max_batch_size}", f"network-mode={network_mode}", "network-type=1",
             f"num-detected-classes={num_classes}", "process-mode=2", "classifier-threshold=0.2",
             f"model-color-format={1 if normalizer['bgr'] else (2 if input_shape[0] == 1 else 0)}",
             "output-blob-names=predictions", "uff-input-order=0"]
    if engine_file:
        lines.append(f"model-engine-file={engine_file}")
    if cal_cache and data_type == "int8":
        lines.append(f"int8-calib-file={cal_cache}")
    write_atomic(path, "\n".join(lines) + "\n")
