"""Deployment exports for every task: ONNX (fp32/fp16), calibrated INT8 (QDQ ONNX + TensorRT cache),
TensorRT engines and DeepStream nvinfer configs.

A task describes what it deploys in an :class:`ExportAdapter` (the module, its input and output
names, dynamic axes, how each output is checked, the INT8 agreement to print, its DeepStream
fields); :func:`export_model` does the rest for any adapter:

1. fp32 ONNX in the requested opset (default :data:`DEFAULT_OPSET`) or one error line, with a
   dynamic batch axis or, with ``static_batch_size``, a fixed one;
2. every output checked against PyTorch on the caller's sample inputs (a failure writes nothing);
3. ``fp16``: onnxruntime's float16 converter; ``int8``: static QDQ quantisation with
   onnxruntime from calibration batches, what follows the last weighted layers (output sigmoids,
   box decoding) left in float, plus a
   TensorRT calibration cache (``TRT-<ver>-<algorithm>`` text, each tensor's scale as big-endian float hex);
4. with a ``tail`` (:class:`GraphTail`, e.g. a detector's NMS, ``engine.detection.nms.BatchedNMS``):
   the tail's nodes appended to the fp32/fp16/int8 graph (so they stay float and unquantised), its
   outputs replacing the ones it consumes, and checked against the tail's NumPy reference on the
   same graph's own pre-tail outputs;
5. optionally a TensorRT engine (one profile covering every input; a tail may swap its nodes for a
   TensorRT plugin first) and DeepStream's ``nvinfer_config.txt`` + ``labels.txt``.

Inputs and outputs travel as dicts ``{name: array}``; :func:`run_onnx` returns all outputs so.
Everything is written to a temporary file first and moved into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import warnings
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from taoctl.engine.cli import deferred_interrupts, temporary_directory
from taoctl.errors import TaoctlError
from taoctl.fileio import NO_SPACE_ERRNOS, out_of_space_names, write_atomic

# Opset 13: the oldest TensorRT a DeepStream 6.x/7.x ships (8.0, DeepStream 6.0) parses ONNX up to opset 13,
# per-channel QDQ (QuantizeLinear's axis, what TensorRT's explicit INT8 reads) starts at 13, and TAO's own
# exports use 12-13; newer DeepStreams (TensorRT 8.5+) also parse 17, which --target_opset gives.
DEFAULT_OPSET = 13
# torch.onnx's dynamo exporter writes opset 18 and newer only, and onnx's version converter cannot take its
# graphs lower (onnx 1.23: no Relu 14->13 adapter; ReduceMean 18->17 keeps an attribute opset 17 lacks, so
# the checker rejects it; onnx/onnx#4781: "downgrade is not well supported"). Older opsets come from
# torch's TorchScript exporter, which writes each opset natively.
DYNAMO_MIN_OPSET = 18
# The oldest opset onnxruntime (the export's checks) and TensorRT's parser read.
MIN_OPSET = 7
# INT8 is per-channel QDQ: QuantizeLinear/DequantizeLinear take an axis from opset 13 on.
INT8_MIN_OPSET = 13
# TensorRT's calibration-cache header is TRT-<version>-<calibrator>; TensorRT 8.6 writes 8601. The calibrator
# named is the TensorRT one that computes ranges as the method used did.
TRT_CACHE_VERSION = "8601"
TRT_CALIBRATORS = {"minmax": "MinMaxCalibration", "entropy": "EntropyCalibration2", "percentile": "LegacyCalibration"}
CALIBRATION_METHODS = tuple(TRT_CALIBRATORS)
# Entropy calibration as TensorRT's EntropyCalibration2 does it: a 2048-bin histogram searched for the
# threshold whose 128-level quantisation loses the least information (KL divergence).
CALIBRATOR_OPTIONS = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128}}
DEFAULT_TOLERANCE = 1e-3
# Output suffixes export writes; TAO 4 named its exports .etlt (encrypted), taoctl writes plain ONNX under it.
OUTPUT_SUFFIXES = (".onnx", ".etlt")
# The layers INT8 is for; quantize_int8 leaves what comes after the last of them in float (post_processing_nodes).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Axis:
    """A dynamic axis of the exported inputs; inputs naming the same axis share its size."""

    name: str
    min: int = 1
    max: int = 4096


# The batch axis; its TensorRT profile range comes from the export's max batch size.
BATCH = Axis("batch")

# (onnx output, PyTorch output) -> why they differ, or None when they agree.
Comparison = Callable[[np.ndarray, np.ndarray], "str | None"]
Outputs = dict[str, np.ndarray]


class NetworkType(IntEnum):
    """nvinfer's ``network-type``."""

    DETECTOR = 0
    CLASSIFIER = 1
    SEGMENTATION = 2
    INSTANCE_SEGMENTATION = 3
    OTHER = 100


class ClusterMode(IntEnum):
    """nvinfer's ``cluster-mode``: how a detector's boxes are grouped."""

    GROUP_RECTANGLES = 0
    DBSCAN = 1
    NMS = 2
    DBSCAN_NMS_HYBRID = 3
    NONE = 4


@dataclass(frozen=True)
class ClassAttributes:
    """One ``[class-attrs-all]`` / ``[class-attrs-<class id>]`` group of a detector's nvinfer config.

    Unset (None) values are left out, so nvinfer uses its defaults.
    """

    pre_cluster_threshold: float | None = None
    post_cluster_threshold: float | None = None
    eps: float | None = None
    min_boxes: int | None = None
    group_threshold: int | None = None
    dbscan_min_score: float | None = None
    nms_iou_threshold: float | None = None
    topk: int | None = None

    _KEYS = {"min_boxes": "minBoxes"}  # nvinfer spells this one in camel case; the others in kebab case

    def lines(self) -> list[str]:
        return [f"{self._KEYS.get(f.name, f.name.replace('_', '-'))}={_format(getattr(self, f.name))}"
                for f in fields(self) if getattr(self, f.name) is not None]


@dataclass(frozen=True)
class DeepStreamFields:
    """The nvinfer ``[property]`` keys that differ per network, and what labels.txt lists.

    ``normalizer``: the model's preprocessing (``Normalizer.describe()``: mean, std on the
    0-255 scale, bgr), from which net-scale-factor, offsets and model-color-format follow.
    ``class_attributes``: keyed ``"all"`` or a class id. output-blob-names are the adapter's
    output names; num-detected-classes is the number of labels.
    """

    network_type: NetworkType
    labels: tuple[str, ...]
    normalizer: Mapping
    cluster_mode: ClusterMode | None = None
    classifier_threshold: float | None = None
    process_mode: int = 1  # 1 primary (full frames), 2 secondary (objects of an upstream detector)
    class_attributes: Mapping[str | int, ClassAttributes] = field(default_factory=dict)
    parse_bbox_func_name: str | None = None  # a custom output parser (TAO's BatchedNMS one) ...
    custom_lib_path: str | None = None  # ... and the library it is in
    notes: tuple[str, ...] = ()  # comment lines written at the top of the config


class GraphTail(Protocol):
    """Nodes appended to an exported graph after its module's outputs (e.g. a detector's NMS, which
    torch.onnx cannot write with fixed-size outputs): ``input_names`` are module outputs it consumes,
    ``output_names`` what the graph then outputs (after the module's other outputs).

    ``append(model, keep_inputs)`` returns the onnx ModelProto with the tail (``keep_inputs`` keeps the
    consumed outputs too, for checking); ``reference(outputs)`` computes the tail's outputs in NumPy from
    the module's (what a model file gives through PyTorch); ``check(got, want)`` returns ``(output,
    measured, failure or None)`` rows; ``tensorrt(model)`` the graph TensorRT builds (a plugin in place of
    standard ops, or ``model`` itself); ``min_opset`` the oldest opset its nodes need.
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    min_opset: int

    def append(self, model, keep_inputs: bool = False): ...

    def reference(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def check(self, got: Mapping[str, np.ndarray],
              want: Mapping[str, np.ndarray]) -> list[tuple[str, str, str | None]]: ...

    def tensorrt(self, model): ...


class TailedModule(nn.Module):
    """A module followed by its :class:`GraphTail`'s NumPy reference: what a model file gives through
    PyTorch, the same outputs as the exported graph (evaluation and inference read one set)."""

    def __init__(self, module: nn.Module, output_names: tuple[str, ...], tail: GraphTail):
        super().__init__()
        self.module, self.output_names, self.tail = module, tuple(output_names), tail

    def forward(self, *inputs, **named):
        outputs = self.module(*inputs, **named)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        raw = {name: out.detach().float().cpu().numpy() for name, out in zip(self.output_names, outputs)}
        final = self.tail.reference(raw)
        return tuple(torch.from_numpy(np.ascontiguousarray(final[name])) for name in self.tail.output_names)


@dataclass
class ExportAdapter:
    """What a task deploys, for :func:`export_model`.

    ``module`` is exported as is (a classifier wraps its model with the softmax it deploys).
    ``dynamic_axes``: per input, ``{axis index: Axis}`` (``BATCH``, a sequence axis, ...).
    ``tolerances``: max abs difference allowed per output (default ``DEFAULT_TOLERANCE``);
    ``comparisons`` replace it for outputs that need their own check (e.g. NMS results).
    ``int8_agreement(fp32 outputs, int8 outputs)`` says how well INT8 agrees (e.g. top-1);
    without it the max abs differences are printed. ``items`` names a batch row in messages.
    ``tail``: a :class:`GraphTail` appended after ``module``'s outputs (``output_names``, which the
    checks above compare); the graph then outputs :attr:`graph_outputs`.
    """

    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, Axis]] = field(default_factory=dict)
    tolerances: Mapping[str, float] = field(default_factory=dict)
    comparisons: Mapping[str, Comparison] = field(default_factory=dict)
    int8_agreement: Callable[[Outputs, Outputs], str] | None = None
    deepstream: DeepStreamFields | None = None
    items: str = "images"
    tail: GraphTail | None = None

    @property
    def graph_outputs(self) -> tuple[str, ...]:
        """The exported graph's outputs: the module's, those a tail consumes replaced by the tail's."""
        if self.tail is None:
            return tuple(self.output_names)
        return tuple(n for n in self.output_names if n not in self.tail.input_names) + tuple(self.tail.output_names)

    def runtime_module(self) -> nn.Module:
        """The module giving the exported graph's outputs in PyTorch (the tail's reference after it)."""
        if self.tail is None:
            return self.module
        return TailedModule(self.module, tuple(self.output_names), self.tail)


@dataclass
class ExportResult:
    onnx: Path
    cal_cache: Path | None = None
    engine: Path | None = None
    deepstream_config: Path | None = None


def batch_profile(max_batch_size: int, min_batch_size: int = 1,
                  opt_batch_size: int | None = None) -> tuple[int, int, int]:
    """(min, opt, max) batch of a TensorRT optimisation profile (TAO's --min/--opt/--max_batch_size);
    ``opt_batch_size`` None is half the maximum (within the range)."""
    opt = opt_batch_size if opt_batch_size is not None else min(max(min_batch_size, max_batch_size // 2),
                                                               max_batch_size)
    if not 1 <= min_batch_size <= opt <= max_batch_size:
        raise TaoctlError(f"TensorRT batch sizes must satisfy 1 <= --min_batch_size ({min_batch_size}) <= "
                          f"--opt_batch_size ({opt}) <= --max_batch_size ({max_batch_size})")
    return min_batch_size, opt, max_batch_size


def export_model(adapter: ExportAdapter, output, sample: Mapping[str, np.ndarray], *,
                 sample_desc: str = "sample inputs", data_type: str = "fp32", opset: int | None = None,
                 static_batch_size: int | None = None,
                 calibration: Iterable[Mapping[str, np.ndarray]] | None = None, cal_cache=None,
                 cal_method: str = "percentile", engine_file=None, max_batch_size: int = 16, min_batch_size: int = 1,
                 opt_batch_size: int | None = None, max_workspace_size: int | None = None,
                 strict_type_constraints: bool = False, gen_ds_config: bool = False,
                 force_ptq: bool = False, quantization: str = "static", announce: bool = True) -> ExportResult:
    """Export ``adapter`` to ``output`` (.onnx, or TAO 4's .etlt name) in ``data_type``; see the module docstring.

    ``sample``: real model inputs by input name (``sample_desc`` says what they are in messages);
    ``calibration``: INT8 calibration batches, each ``{input name: array}``; ``opset``: None is
    :data:`DEFAULT_OPSET`; ``static_batch_size``: a fixed batch dimension instead of the dynamic one,
    None or -1 (TAO's value) for dynamic (the checks and calibration then run on batches of that
    size, as TAO's export does, and DeepStream's batch-size is it); ``min_batch_size``,
    ``opt_batch_size``, ``max_batch_size``: the TensorRT engine's profile (:func:`batch_profile`),
    ``max_workspace_size`` (bytes) and ``strict_type_constraints``: its builder (:func:`build_tensorrt_engine`).
    ``quantization``: how ``int8`` quantises, ``static`` (QDQ from ``calibration``, for TensorRT) or
    ``dynamic`` (onnxruntime's int8 weights with activations quantised per batch at run time: no calibration,
    what transformer encoders deploy on CPU). ``announce``: print the ``Exported ... to <output>`` line; False
    where the caller moves or packs ``output`` and names the final file itself.
    """
    output = Path(output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise TaoctlError(f"-o {output}: taoctl exports ONNX; name the output *.onnx (or TAO 4's *.etlt)")
    if data_type not in ("fp32", "fp16", "int8"):
        raise TaoctlError(f"unknown data type {data_type}; use fp32, fp16 or int8")
    if set(sample) != set(adapter.input_names):
        raise ValueError(f"sample inputs {sorted(sample)} are not the adapter's inputs {list(adapter.input_names)}")
    if gen_ds_config and adapter.deepstream is None:
        raise ValueError("this adapter has no DeepStream fields")
    batch_profile(max_batch_size, min_batch_size, opt_batch_size)  # refused before minutes of export, not after
    if max_workspace_size is not None and max_workspace_size < 1:
        raise TaoctlError(f"--max_workspace_size must be >= 1 (bytes), got {max_workspace_size}")
    opset = DEFAULT_OPSET if opset is None else opset
    if opset < MIN_OPSET:
        raise TaoctlError(f"ONNX opset {opset} is not supported: taoctl exports opset {MIN_OPSET} and newer")
    if data_type == "int8" and opset < INT8_MIN_OPSET:
        raise TaoctlError(f"INT8 export needs opset {INT8_MIN_OPSET} or newer (per-channel QuantizeLinear/"
                          f"DequantizeLinear), got {opset}")
    if adapter.tail is not None and opset < adapter.tail.min_opset:
        raise TaoctlError(f"ONNX opset {opset}: this model's outputs ({', '.join(adapter.tail.output_names)}) "
                          f"need opset {adapter.tail.min_opset} or newer")
    static = None if static_batch_size in (None, -1) else static_batch_size  # TAO: -1 is a dynamic batch
    if static is not None:
        adapter, sample, calibration = _static_batch(adapter, sample, calibration, static)
    if output.suffix.lower() == ".etlt":
        print(f"Notice: {output} is written as plain, unencrypted ONNX (TAO 4's .etlt was encrypted with -k); "
              f"DeepStream reads it with onnx-file=, not tlt-encoded-model=", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    result = ExportResult(output)
    from taoctl.engine import qat

    quantization_aware = qat.is_qat(adapter.module)
    with out_of_space_names(output), temporary_directory(output.parent) as work:
        fp32 = Path(work) / "fp32.onnx"
        # A QAT model's float graph is the model with its fake quantisation off.
        with qat.float_mode(adapter.module) if quantization_aware else contextlib.nullcontext():
            export_onnx(adapter, fp32, sample, opset)
            reference = run_onnx(fp32, sample)
            checks = check_outputs(adapter, reference, torch_outputs(adapter, sample))
        print(f"ONNX fp32 vs PyTorch on {sample_desc}: {_summary(checks)}", flush=True)
        for name, _, failure in checks:
            if failure:
                raise TaoctlError(f"exported ONNX output {name} differs from PyTorch: {failure}; not writing {output}")
        final = fp32
        if data_type == "fp16":
            final = Path(work) / "fp16.onnx"
            convert_fp16(fp32, final)
            checks = check_outputs(adapter, run_onnx(final, sample), reference)
            print(f"ONNX fp16 vs fp32: {_summary(checks)}", flush=True)
        elif data_type == "int8" and quantization_aware and not force_ptq:
            final = Path(work) / "int8.onnx"
            qat.export_qdq(adapter.module, sample, final, adapter.input_names, adapter.output_names,
                           {name: {axis: a.name for axis, a in axes.items()} for name, axes in adapter.dynamic_axes.items()},
                           opset=opset)
            print("INT8 from quantization-aware training: the scales it learned, no calibration data", flush=True)
            trained = check_outputs(adapter, run_onnx(final, sample), torch_outputs(adapter, sample))
            print(f"ONNX int8 vs the QAT model in PyTorch on {sample_desc}: {_summary(trained)}", flush=True)
            result.cal_cache = Path(cal_cache) if cal_cache else output.with_suffix(".cal.bin")
            write_trt_cache(result.cal_cache, {name: (-127 * scale, 127 * scale)
                                               for name, scale in qat.quantized_scales(final).items()})
            print(f"Wrote TensorRT calibration cache {result.cal_cache} (the QAT scales)", flush=True)
        elif data_type == "int8" and quantization == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            final = Path(work) / "int8.onnx"
            root_logger = logging.getLogger()  # onnxruntime's quantizer advises pre-processing on the root logger
            level = root_logger.level
            root_logger.setLevel(logging.ERROR)
            try:
                quantize_dynamic(str(fp32), str(final), weight_type=QuantType.QInt8)
            finally:
                root_logger.setLevel(level)
            quantised = run_onnx(final, sample)
            agreement = adapter.int8_agreement(reference, quantised) if adapter.int8_agreement else \
                _summary(check_outputs(adapter, quantised, reference))
            print(f"ONNX int8 (dynamic) vs fp32 on {sample_desc}: {agreement}", flush=True)
        elif data_type == "int8":
            batches = list(calibration or [])
            if not batches:
                raise TaoctlError(f"INT8 calibration needs at least one batch of {adapter.items}")
            final = Path(work) / "int8.onnx"
            result.cal_cache = Path(cal_cache) if cal_cache else output.with_suffix(".cal.bin")
            count = sum(len(batch[adapter.input_names[0]]) for batch in batches)
            print(f"Calibrating on {count} {adapter.items} ({cal_method}) ...", flush=True)
            quantize_int8(fp32, final, batches, cache_path=result.cal_cache, method=cal_method)
            quantised = run_onnx(final, sample)
            agreement = adapter.int8_agreement(reference, quantised) if adapter.int8_agreement else \
                _summary(check_outputs(adapter, quantised, reference))
            print(f"ONNX int8 vs fp32 on {sample_desc}: {agreement}", flush=True)
            print(f"Wrote TensorRT calibration cache {result.cal_cache}", flush=True)
        if adapter.tail is not None:
            tailed = Path(work) / "tailed.onnx"
            checks = append_tail(adapter, final, tailed, sample)
            print(f"ONNX {', '.join(adapter.tail.output_names)} vs the same graph's "
                  f"{', '.join(adapter.tail.input_names)} through taoctl's post-processing: {_summary(checks)}",
                  flush=True)
            for name, _, failure in checks:
                if failure:
                    raise TaoctlError(f"exported ONNX output {name} differs from taoctl's post-processing: {failure}; "
                                      f"not writing {output}")
            final = tailed
        os.replace(final, output)
    if announce:
        print(f"Exported {data_type} ONNX model to {output}", flush=True)
    if engine_file:
        try:
            profile = tensorrt_profile(adapter, sample, max_batch_size, opt_batch_size=opt_batch_size,
                                       min_batch_size=min_batch_size)
            build_tensorrt_engine(output, engine_file, profile, data_type, max_workspace_size=max_workspace_size,
                                  strict_type_constraints=strict_type_constraints)
            result.engine = Path(engine_file)
            print(f"Wrote TensorRT engine {engine_file}", flush=True)
        except TaoctlError as exc:  # the ONNX model is the deliverable; the engine can be built on the target
            print(f"Warning: {exc}", flush=True)
    if gen_ds_config:
        labels = output.parent / "labels.txt"
        write_atomic(labels, "\n".join(adapter.deepstream.labels) + "\n")
        result.deepstream_config = output.parent / "nvinfer_config.txt"
        first = adapter.input_names[0]
        deepstream_config(result.deepstream_config, adapter.deepstream, onnx_file=output.name, labels_file=labels.name,
                          input_shape=tuple(sample[first].shape[1:]), output_names=adapter.graph_outputs,
                          data_type=data_type, max_batch_size=static or max_batch_size,
                          cal_cache=result.cal_cache.name if result.cal_cache else None,
                          engine_file=result.engine.name if result.engine else None)
        print(f"Wrote DeepStream config {result.deepstream_config} and {labels}", flush=True)
    return result


def _static_batch(adapter: ExportAdapter, sample: Mapping[str, np.ndarray],
                  calibration: Iterable[Mapping[str, np.ndarray]] | None, size: int):
    """The adapter without its batch axis, and the sample and calibration inputs in batches of ``size``.

    The sample keeps its first ``size`` rows (repeated when it has fewer); calibration rows are
    regrouped into batches of ``size``, the last one completed from the first rows.
    """
    if size < 1:
        raise TaoctlError(f"--static_batch_size must be -1 (dynamic) or >= 1, got {size}")
    axes = {name: index for name, dims in adapter.dynamic_axes.items()
            for index, axis in dims.items() if axis.name == BATCH.name}
    unbatched = [name for name in adapter.input_names if name not in axes]
    if unbatched:
        raise TaoctlError(f"--static_batch_size: input {unbatched[0]} of this model has no batch axis")
    fixed = replace(adapter, dynamic_axes={name: {index: axis for index, axis in dims.items()
                                                  if axis.name != BATCH.name}
                                           for name, dims in adapter.dynamic_axes.items()})

    def rows(inputs: Mapping[str, np.ndarray], picked: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.take(np.asarray(array), picked % np.asarray(array).shape[axes[name]], axis=axes[name])
                for name, array in inputs.items()}

    static_sample = rows(sample, np.arange(size))
    if calibration is None:
        return fixed, static_sample, None
    batches = list(calibration)
    if not batches:
        return fixed, static_sample, []
    joined = {name: np.concatenate([np.asarray(batch[name]) for batch in batches], axis=axes[name])
              for name in batches[0]}
    total = joined[adapter.input_names[0]].shape[axes[adapter.input_names[0]]]
    regrouped = [rows(joined, np.arange(start, start + size)) for start in range(0, total, size)]
    return fixed, static_sample, regrouped


# --------------------------------------------------------------------------- ONNX export and checks
@contextlib.contextmanager
def quiet_exporter():
    """torch.onnx and onnxscript log their progress, and a failed opset conversion as a traceback
    followed by success; the opset is checked afterwards instead."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_onnx(adapter: ExportAdapter, path, sample: Mapping[str, np.ndarray], opset: int = DEFAULT_OPSET) -> None:
    """fp32 ONNX of ``adapter.module`` (eval mode, CPU) in ``opset`` with the adapter's names and dynamic axes.

    Opsets from :data:`DYNAMO_MIN_OPSET` on come from torch's dynamo exporter, older ones from its
    TorchScript exporter (see there); the file is checked with ``onnx.checker``. A model or opset
    the exporter cannot handle is one TaoctlError line.
    """
    import onnx

    module = adapter.module.eval().cpu()
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = []
    traced = []
    for name in adapter.input_names:
        axes = adapter.dynamic_axes.get(name, {})
        for axis in axes.values():  # one Dim per axis name: inputs naming it share its size
            if axis.name not in dims:
                dims[axis.name] = torch.export.Dim(axis.name, min=axis.min, max=axis.max)
        dynamic_shapes.append({index: dims[axis.name] for index, axis in axes.items()} or None)
        array = np.asarray(sample[name])
        for index in axes:  # tracing specialises sizes 0 and 1, so trace dynamic axes at size >= 2
            if array.shape[index] < 2:
                array = np.concatenate([array, array], axis=index)
        traced.append(torch.from_numpy(np.ascontiguousarray(array)))
    refused = f"ONNX opset {opset} cannot be produced for this model"
    with quiet_exporter(), deferred_interrupts(), torch.no_grad():
        if opset >= DYNAMO_MIN_OPSET:
            program = torch.onnx.export(module, tuple(traced), dynamo=True, input_names=list(adapter.input_names),
                                        output_names=list(adapter.output_names), dynamic_shapes=tuple(dynamic_shapes),
                                        opset_version=opset, external_data=False, verbose=False)
            written = next(entry.version for entry in program.model_proto.opset_import
                           if entry.domain in ("", "ai.onnx"))
            if written != opset:
                raise TaoctlError(f"{refused}: torch.onnx wrote opset {written} and could not convert it; ask for "
                                  f"opset {written} or newer, or leave the opset unset")
            program.save(str(path))
        else:
            try:
                torch.onnx.export(module, tuple(traced), str(path), dynamo=False, opset_version=opset,
                                  input_names=list(adapter.input_names), output_names=list(adapter.output_names),
                                  dynamic_axes={name: {index: axis.name for index, axis in axes.items()}
                                                for name, axes in adapter.dynamic_axes.items() if axes})
            except Exception as exc:  # torch raises several types (unsupported operator, tracing errors, ...)
                if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
                    raise  # a full disk, not the opset: export_model names the output
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise TaoctlError(f"{refused} ({reason}); a newer --target_opset may export it") from None
    try:
        check_onnx(path)
    except onnx.checker.ValidationError as exc:
        raise TaoctlError(f"{refused}: the exported file fails onnx.checker "
                          f"({str(exc).strip().splitlines()[0]})") from None


def check_onnx(path) -> None:
    """onnx.checker's full check, interrupts held back meanwhile: it is C++ (nanobind) too, and an interrupt
    raised inside it aborted the process ("terminate called after throwing an instance of
    'nanobind::python_error'"; seen once under load in the interrupted-export test)."""
    import onnx

    with deferred_interrupts():
        onnx.checker.check_model(str(path), full_check=True)


def torch_outputs(adapter: ExportAdapter, inputs: Mapping[str, np.ndarray]) -> Outputs:
    """The adapter module's outputs by name, for the same inputs ONNX gets."""
    module = adapter.module.eval().cpu()
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in adapter.input_names))
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    if len(outputs) != len(adapter.output_names):
        raise ValueError(f"the module returns {len(outputs)} outputs; the adapter names {len(adapter.output_names)}")
    return {name: out.numpy() for name, out in zip(adapter.output_names, outputs)}


def append_tail(adapter: ExportAdapter, body, path,
                sample: Mapping[str, np.ndarray]) -> list[tuple[str, str, str | None]]:
    """Write ``body`` (an exported graph of ``adapter.module``) with ``adapter.tail`` appended to ``path``;
    return the tail's checks: its outputs in onnxruntime against its NumPy reference on the pre-tail
    outputs of the same run (so the tail alone is compared, not the body's float differences)."""
    import onnx

    tail = adapter.tail
    model = onnx.load(str(body))
    checking = Path(path).with_name(Path(path).stem + ".check.onnx")
    onnx.save(tail.append(model, keep_inputs=True), str(checking))
    got = run_onnx(checking, sample)
    checking.unlink()
    checks = tail.check(got, tail.reference({name: got[name] for name in tail.input_names}))
    final = tail.append(model)
    sort_nodes(final.graph)  # onnxruntime's fp16 converter appends its input Casts last; TensorRT wants order
    onnx.save(final, str(path))
    try:
        check_onnx(path)
    except onnx.checker.ValidationError as exc:
        raise TaoctlError(f"the graph with {', '.join(tail.output_names)} appended fails onnx.checker "
                          f"({str(exc).strip().splitlines()[0]})") from None
    return checks


def sort_nodes(graph) -> None:
    """Put ``graph``'s nodes in topological order (stable: an already ordered graph is unchanged)."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    needs = [sorted({producer[name] for name in node.input if name in producer and producer[name] != i})
             for i, node in enumerate(graph.node)]
    state = [0] * len(needs)  # 0 new, 1 on the stack, 2 placed
    order = []
    for root in range(len(needs)):
        stack = [root]
        while stack:
            i = stack[-1]
            if state[i] == 2:
                stack.pop()
                continue
            state[i] = 1
            pending = [j for j in needs[i] if state[j] == 0]
            if pending:
                stack.extend(reversed(pending))
                continue
            if any(state[j] == 1 for j in needs[i]):
                return  # a cycle: leave it for the checker to name
            state[i] = 2
            order.append(i)
            stack.pop()
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def tensorrt_graph(onnx_path, work) -> Path:
    """The ONNX TensorRT builds: ``onnx_path`` itself, or, when its metadata records a tail that swaps
    nodes for a TensorRT plugin (taoctl's BatchedNMS -> EfficientNMS_TRT), that graph written in ``work``."""
    import onnx

    from taoctl.engine.detection import nms

    model = onnx.load(str(onnx_path), load_external_data=False)
    tail = nms.graph_tail(model)
    if tail is None:
        return Path(onnx_path)
    rewritten = Path(work) / "tensorrt.onnx"
    onnx.save(tail.tensorrt(onnx.load(str(onnx_path))), str(rewritten))
    return rewritten


def check_outputs(adapter: ExportAdapter, actual: Outputs, expected: Outputs) -> list[tuple[str, str, str | None]]:
    """(output name, what was measured, why it fails the adapter's check or None) for every output."""
    checks = []
    for name in adapter.output_names:
        got, want = np.asarray(actual[name]), np.asarray(expected[name])
        if name in adapter.comparisons:
            why = adapter.comparisons[name](got, want)
            checks.append((name, why or "matches", why))
        elif got.shape != want.shape:
            found = f"shape {got.shape}, expected {want.shape}"
            checks.append((name, found, found))
        else:
            diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
            tolerance = adapter.tolerances.get(name, DEFAULT_TOLERANCE)
            found = f"max abs diff {diff:.3g}"
            checks.append((name, found, None if diff <= tolerance else f"{found} (over {tolerance:g})"))  # NaN fails
    return checks


def _summary(checks: list[tuple[str, str, str | None]]) -> str:
    if len(checks) == 1:
        return checks[0][1]
    return ", ".join(f"{name} {text}" for name, text, _ in checks)


def ort_session(path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(_onnxruntime_source(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise TaoctlError(f"{path}: onnxruntime cannot load it ({exc})") from exc


def _onnxruntime_source(path) -> str | bytes:
    """What onnxruntime loads for ``path``: the file, or for a symmetric-INT8 export the same arithmetic in the
    form its x86 kernels fuse (:mod:`taoctl.engine.ort_int8`)."""
    import onnx

    from taoctl.engine import ort_int8

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX: onnxruntime's own error names the problem
        return str(path)
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer):
        return str(path)
    rewritten = ort_int8.for_onnxruntime(model)
    return str(path) if rewritten is None else rewritten.SerializeToString()


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def run_onnx(path_or_session, inputs: np.ndarray | Mapping[str, np.ndarray]) -> Outputs:
    """Every output of an ONNX model, by name; ``inputs`` by name, or one array for a one-input model.

    Arrays are cast to the types the model declares (fp32 data into an fp16 model, say).
    """
    session = ort_session(path_or_session) if isinstance(path_or_session, (str, os.PathLike)) else path_or_session
    declared = session.get_inputs()
    if not isinstance(inputs, Mapping):
        if len(declared) != 1:
            raise TaoctlError(f"the model takes {len(declared)} inputs ({', '.join(i.name for i in declared)}); "
                              f"pass them by name")
        inputs = {declared[0].name: inputs}
    missing = [i.name for i in declared if i.name not in inputs]
    if missing:
        raise TaoctlError(f"model input {', '.join(missing)} not given")
    feed = {i.name: np.asarray(inputs[i.name]).astype(_ORT_TYPES.get(i.type, np.asarray(inputs[i.name]).dtype),
                                                      copy=False) for i in declared}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def convert_fp16(src, dst) -> None:
    """fp16 weights and compute, fp32 inputs/outputs (onnxruntime's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


# --------------------------------------------------------------------------- INT8
class _Reader:
    """onnxruntime CalibrationDataReader over a list of ``{input name: array}`` batches (rewindable)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.batches = batches
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self):
        self.position = 0


def quantize_int8(fp32_path, int8_path, batches: Iterable[Mapping[str, np.ndarray]], cache_path=None,
                  method: str = "percentile") -> dict[str, tuple[float, float]]:
    """Calibrated static INT8 (QDQ) of an fp32 ONNX model; returns the activation ranges used.

    ``batches``: calibration inputs, each ``{input name: array}`` (float arrays as float32).
    ``method``: minmax, entropy or percentile. The post-processing after the last weighted layers stays
    float (:func:`post_processing_nodes`); ``cache_path``'s header names ``method``'s calibrator.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = dict(zip(CALIBRATION_METHODS,
                       (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile)))
    if method not in methods:
        raise TaoctlError(f"unknown calibration method {method}; use {', '.join(methods)}")
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}  # older exporters list weights as inputs too
    names = [i.name for i in graph.input if i.name not in weights]
    prepared_batches = []
    for batch in batches:
        if set(batch) != set(names):
            raise TaoctlError(f"a calibration batch has inputs {sorted(batch)}; the model takes {names}")
        prepared_batches.append({name: np.ascontiguousarray(array, dtype=np.float32)
                                 if np.issubdtype(np.asarray(array).dtype, np.floating) else np.ascontiguousarray(array)
                                 for name, array in batch.items()})
    if not prepared_batches:
        raise TaoctlError("INT8 calibration needs at least one batch")
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    from taoctl.engine.detection import nms

    tail = nms.graph_tail(onnx.load(str(fp32_path), load_external_data=False))
    with temporary_directory(int8_path.parent) as work:
        if tail is not None:  # a graph-appended NMS stays float: quantise the network alone, append it again
            body = Path(work) / "body.onnx"
            onnx.save(tail.strip(onnx.load(str(fp32_path))), str(body))
            fp32_path = body
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # Calibrated once, here: quantize_static reads these ranges from the cache file instead of
        # calibrating again, and its own entropy calibrator would histogram into as many bins as it
        # quantises to (128), which leaves the full range as the only candidate threshold.
        calibrator = create_calibrator(str(prepared), calibrate_method=methods[method],
                                       augmented_model_path=str(Path(work) / "augmented.onnx"),
                                       extra_options=CALIBRATOR_OPTIONS.get(method, {}))
        calibrator.collect_data(_Reader(prepared_batches))
        tensors = calibrator.compute_data()
        del calibrator
        ranges = {name: (float(np.asarray(r.range_value[0]).item()), float(np.asarray(r.range_value[1]).item()))
                  for name, r in tensors.data.items()}
        computed = Path(work) / "ranges.json"
        save_tensors_data(tensors, computed)
        tmp = Path(work) / "int8.onnx"
        # Symmetric signed int8 everywhere (zero points 0): what TensorRT builds as explicit INT8. 8-bit
        # weights: on BCCD's detectnet_v2 7-bit ones (reduce_range, which avoids the int16 saturation of
        # onnxruntime's non-VNNI x86 kernels) lost 5 points of mAP, the saturation about 1.
        quantize_static(str(prepared), str(tmp), _Reader(prepared_batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method],
                        nodes_to_exclude=post_processing_nodes(prepared),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                        calibration_cache_path=computed)
        if tail is not None:
            onnx.save(tail.append(onnx.load(str(tmp))), str(tmp))
        os.replace(tmp, int8_path)
    if cache_path:
        write_trt_cache(cache_path, ranges, method)
    return ranges


def post_processing_nodes(path) -> list[str]:
    """Names of the nodes no weighted layer (:data:`WEIGHTED_OPS`) depends on: what follows the network's
    last layers (output sigmoids and softmaxes, yolo_v3's box decoding) and INT8 leaves in float. QDQ
    pairs there round probabilities to 1/255 steps and decoded boxes by pixels, and onnxruntime runs
    each of them in float anyway."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {name: node for node in graph.node for name in node.output}
    needed, pending = set(), [node for node in graph.node if node.op_type in WEIGHTED_OPS]
    while pending:
        node = pending.pop()
        if node.name in needed:
            continue
        needed.add(node.name)
        pending.extend(producers[name] for name in node.input if name in producers)
    return [node.name for node in graph.node if node.name not in needed]


def write_trt_cache(path, ranges: dict[str, tuple[float, float]], method: str = "minmax") -> None:
    """TensorRT calibration cache: a ``TRT-<version>-<calibrator of method>`` header, then one
    ``tensor: <scale as big-endian float32 hex>`` per line."""
    if method not in TRT_CALIBRATORS:
        raise TaoctlError(f"unknown calibration method {method}; use {', '.join(TRT_CALIBRATORS)}")
    lines = [f"TRT-{TRT_CACHE_VERSION}-{TRT_CALIBRATORS[method]}"]
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


# --------------------------------------------------------------------------- TensorRT
Shape = tuple[int, ...]


def tensorrt_profile(adapter: ExportAdapter, sample: Mapping[str, np.ndarray], max_batch_size: int, *,
                     min_batch_size: int = 1,
                     opt_batch_size: int | None = None) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input: fixed axes as in ``sample``, the batch axis
    :func:`batch_profile`'s, other dynamic axes their range (optimum as in ``sample``)."""
    batches = batch_profile(max_batch_size, min_batch_size, opt_batch_size)
    profile = {}
    for name in adapter.input_names:
        low, best, high = (list(np.asarray(sample[name]).shape) for _ in range(3))
        for index, axis in adapter.dynamic_axes.get(name, {}).items():
            if axis.name == BATCH.name:
                low[index], best[index], high[index] = batches
            else:
                low[index], high[index] = axis.min, axis.max
                best[index] = min(max(best[index], axis.min), axis.max)
        profile[name] = (tuple(low), tuple(best), tuple(high))
    return profile


def build_tensorrt_engine(onnx_path, engine_path, profile: Mapping[str, tuple[Shape, Shape, Shape]],
                          data_type: str = "fp32", max_workspace_size: int | None = None,
                          strict_type_constraints: bool = False) -> None:
    """Build a serialized TensorRT engine; TaoctlError when ``tensorrt`` does not import.

    ``profile``: (min, opt, max) shape per input (:func:`tensorrt_profile`); ``max_workspace_size``:
    bytes of scratch memory (None: TensorRT's default); ``strict_type_constraints``: TAO's
    ``-s``, TensorRT's OBEY_PRECISION_CONSTRAINTS (the successor of STRICT_TYPES).
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TaoctlError(f"TensorRT engine not built: the tensorrt Python package does not import here "
                          f"({exc}); the ONNX model {onnx_path} is kept, build the engine on the target with "
                          f"trtexec --onnx={onnx_path}") from None
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # EfficientNMS_TRT and TensorRT's other plugins
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with temporary_directory() as work:
        parsed = parser.parse(tensorrt_graph(onnx_path, work).read_bytes())
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TaoctlError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if data_type == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif data_type == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # the QDQ nodes carry the scales
    if strict_type_constraints:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if max_workspace_size is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, max_workspace_size)
    optimization = builder.create_optimization_profile()
    for name, (low, best, high) in profile.items():
        optimization.set_shape(name, low, best, high)
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TaoctlError(f"TensorRT failed to build an engine from {onnx_path}")
    write_atomic(engine_path, bytes(serialized))


# --------------------------------------------------------------------------- DeepStream
def _format(value) -> str:
    return f"{value:.8g}" if isinstance(value, float) else str(int(value) if isinstance(value, IntEnum) else value)


def deepstream_config(path, network: DeepStreamFields, *, onnx_file: str, labels_file: str, input_shape: Shape,
                      output_names: Iterable[str], data_type: str, max_batch_size: int = 1,
                      cal_cache: str | None = None, engine_file: str | None = None) -> None:
    """DeepStream nvinfer config (``[property]`` and any ``[class-attrs-*]`` groups).

    DeepStream computes ``net-scale-factor * (pixel - offset)``, one scale for all channels:
    per-channel std (torch mode) is approximated by its mean.
    """
    normalizer = network.normalizer
    color = 1 if normalizer["bgr"] else (2 if input_shape[0] == 1 else 0)  # BGR, GRAY, else RGB
    properties = {
        "gpu-id": 0, "net-scale-factor": 1.0 / float(np.mean(normalizer["std"])),
        "offsets": ";".join(f"{m:.4f}" for m in normalizer["mean"]),
        "onnx-file": onnx_file, "labelfile-path": labels_file, "infer-dims": ";".join(map(str, input_shape)),
        "batch-size": max_batch_size, "network-mode": {"fp32": 0, "int8": 1, "fp16": 2}[data_type],
        "network-type": network.network_type, "num-detected-classes": len(network.labels),
        "process-mode": network.process_mode, "model-color-format": color,
        "output-blob-names": ";".join(output_names), "cluster-mode": network.cluster_mode,
        "classifier-threshold": network.classifier_threshold, "model-engine-file": engine_file,
        "int8-calib-file": cal_cache if data_type == "int8" else None,
        "parse-bbox-func-name": network.parse_bbox_func_name, "custom-lib-path": network.custom_lib_path,
    }
    lines = [f"# {note}" for note in network.notes]
    lines += ["[property]"] + [f"{key}={_format(value)}" for key, value in properties.items() if value is not None]
    for key, attributes in network.class_attributes.items():
        lines += ["", f"[class-attrs-{key}]", *attributes.lines()]
    write_atomic(path, "\n".join(lines) + "\n")
