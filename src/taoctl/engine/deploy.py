"""``taoctl deploy <task> gen_trt_engine | evaluate | inference``: TAO 5's tao-deploy, for every task.

* ``gen_trt_engine`` builds a TensorRT engine from an exported ONNX (an fp32 ONNX asked for INT8
  is first quantised with the export's calibration, so TensorRT gets explicit QDQ scales) and
  writes beside it a JSON record (``<engine>.json``) of the TensorRT version, GPU, compute
  capability, inputs, outputs and data type it was built with;
* ``evaluate`` / ``inference`` run the task's own evaluator and ``infer`` (the report the
  training-side subtasks give) on a :class:`TensorRTPredictor`, or on onnxruntime for an ``.onnx``.

An engine only runs on the TensorRT version and GPU architecture it was built for; the record
lets a mismatched load be refused in one line instead of TensorRT's deserialisation errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from taoctl.engine import distributed
from taoctl.engine.cli import echo, temporary_directory
from taoctl.engine.task import OnnxPredictor, Predictor, Run, Task, is_onnx, resolve
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic

ENGINE_SUFFIXES = (".engine", ".trt", ".plan")
RECORD_FORMAT = "taoctl-tensorrt-engine"
NO_TENSORRT = "TensorRT is not installed here (pip install tensorrt-cu12 on a machine with an NVIDIA GPU)"
NO_GPU = "TensorRT imports but no CUDA GPU is visible here: an engine is built and run on the GPU it is for"


@dataclasses.dataclass(frozen=True)
class Platform:
    """What an engine is bound to: TensorRT's version and the GPU (its architecture decides)."""

    tensorrt_version: str
    gpu: str
    compute_capability: str


def record_path(engine) -> Path:
    return Path(f"{engine}.json")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise TaoctlError(NO_TENSORRT) from None
    return tensorrt


def current_platform(trt, device: torch.device) -> Platform:
    major, minor = torch.cuda.get_device_capability(device)
    return Platform(trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}")


def check_engine_record(engine, record: dict, platform: Platform) -> str | None:
    """Refuse (one line) an engine built for another TensorRT version or GPU architecture.

    Returns a warning line when only the GPU's name differs: TensorRT runs an engine on any GPU of
    the compute capability it was built for, possibly with other tactics' speed.
    """
    if record.get("format") != RECORD_FORMAT:
        raise TaoctlError(f"{record_path(engine)}: not a taoctl engine record")
    built = Platform(str(record.get("tensorrt_version")), str(record.get("gpu")),
                     str(record.get("compute_capability")))
    if (built.tensorrt_version, built.compute_capability) != (platform.tensorrt_version,
                                                              platform.compute_capability):
        raise TaoctlError(f"{engine} was built with TensorRT {built.tensorrt_version} for {built.gpu} (compute "
                          f"{built.compute_capability}); this machine has TensorRT {platform.tensorrt_version} "
                          f"and {platform.gpu} (compute {platform.compute_capability}): rebuild it here with "
                          f"gen_trt_engine")
    if built.gpu != platform.gpu:
        return (f"Warning: {engine} was built on {built.gpu}, this is {platform.gpu} (same compute "
                f"{platform.compute_capability}); it runs, rebuild it here for this GPU's fastest kernels")
    return None


def _inference_device(run: Run) -> torch.device:
    from taoctl.engine.device import select_device

    return select_device(run.flag("gpus", 1), run.flags.get("gpu_index"), quiet=True)


def _gpu(run: Run) -> torch.device:
    """The CUDA device TensorRT uses (--gpu_index picks it), or one line saying there is none."""
    if not torch.cuda.is_available():
        raise TaoctlError(NO_GPU)
    return _inference_device(run)


# --------------------------------------------------------------------------- gen_trt_engine
def onnx_io(onnx_path) -> tuple[dict[str, list], list[str]]:
    """``({input name: dims, a dynamic one None}, output names)`` of an ONNX graph, weights excluded."""
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and friends on a file that is not ONNX
        raise TaoctlError(f"-m {onnx_path}: not an ONNX model ({exc})") from None
    weights = {tensor.name for tensor in graph.initializer}
    inputs = {i.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                       for d in i.type.tensor_type.shape.dim] for i in graph.input if i.name not in weights}
    return inputs, [o.name for o in graph.output]


def engine_profile(onnx_path, max_batch_size: int, min_batch_size: int = 1,
                   opt_batch_size: int | None = None) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape per input: a dynamic first axis is the batch (TAO's batch flags), every
    other axis must be fixed in the ONNX."""
    from taoctl.engine.export import batch_profile

    batches = batch_profile(max_batch_size, min_batch_size, opt_batch_size)
    inputs, _ = onnx_io(onnx_path)
    profile = {}
    for name, dims in inputs.items():
        if not dims:
            raise TaoctlError(f"{onnx_path}: input {name} has no shape")
        dynamic = [i for i, d in enumerate(dims[1:], start=1) if d is None]
        if dynamic:
            raise TaoctlError(f"{onnx_path}: input {name} has dynamic axes {dynamic} besides the batch; "
                              f"gen_trt_engine builds engines with a dynamic batch only")
        if dims[0] is None:
            profile[name] = tuple((b, *dims[1:]) for b in batches)
        else:  # a static batch (export --static_batch_size): the engine takes that batch only
            profile[name] = (tuple(dims),) * 3
    return profile


def is_quantized(onnx_path) -> bool:
    """Whether the ONNX carries explicit INT8 scales (QuantizeLinear/DequantizeLinear, an int8 export)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)


def calibration_batches(task: Task, run: Run, onnx_path) -> list[dict[str, np.ndarray]]:
    """INT8 calibration inputs for an fp32 ONNX, as export finds them: an existing --cal_data_file unless
    --cal_image_dir is given, else images of --cal_image_dir or the spec's data (then saved to --cal_data_file)."""
    from taoctl.engine.calibration import read_calibration_file, write_calibration_file

    flags = run.flags
    inputs, _ = onnx_io(onnx_path)
    if len(inputs) != 1:
        raise TaoctlError(f"{onnx_path}: INT8 calibration here takes a one-input model; export it with "
                          f"--data_type int8 and build the engine from that")
    if run.spec is None:
        raise TaoctlError(f"INT8 engine from the fp32 {onnx_path}: pass -e (the spec's preprocessing and data) "
                          f"to calibrate, or build from an int8 export")
    manifest = task.onnx_manifest(run, onnx_path)
    batch_size, count = flags["batch_size"], flags["batch_size"] * flags["batches"]
    cal_file, folder = flags.get("cal_data_file"), flags.get("cal_image_dir")
    if cal_file and not folder and os.path.exists(cal_file):
        raw = read_calibration_file(cal_file, tuple(manifest["input_shape"]))
        echo(f"Read {len(raw)} calibration inputs from {cal_file}")
    else:
        folder = folder or task.default_sample_folder(run)
        if not folder:
            raise TaoctlError("INT8 calibration needs images: pass --cal_image_dir, --cal_data_file or -e with "
                              "dataset paths")
        raw = task.sample_inputs(run, manifest, folder, count)
        if cal_file:
            write_calibration_file(cal_file, raw)
    preprocess, name = task.preprocess(manifest), next(iter(inputs))
    raw = raw[:count]
    return [{name: preprocess(raw[i:i + batch_size])} for i in range(0, len(raw), batch_size)]


def run_gen_trt_engine(task: Task, run: Run) -> int:
    from taoctl.engine.export import build_tensorrt_engine, quantize_int8

    flags = run.flags
    onnx_path = Path(flags["model_path"])
    if not onnx_path.is_file():
        raise TaoctlError(f"-m {onnx_path}: no such file")
    if onnx_path.suffix.lower() not in (".onnx", ".etlt"):
        raise TaoctlError(f"-m {onnx_path}: gen_trt_engine builds from an exported .onnx "
                          f"(taoctl model {task.name} export)")
    if flags["max_workspace_size"] <= 0:
        raise TaoctlError(f"--max_workspace_size must be > 0 (GB), got {flags['max_workspace_size']}")
    for flag, name, why in (("key", "-k", "taoctl's exports are plain ONNX"),
                            ("cal_json_file", "--cal_json_file", "a taoctl QAT ONNX carries its scales in its "
                                                                 "QDQ nodes"),
                            ("force_ptq", "--force_ptq", "INT8 from an fp32 ONNX always calibrates")):
        if flags.get(flag):
            echo(f"Notice: {name} is not used: {why}.")
    profile = engine_profile(onnx_path, flags["max_batch_size"], flags["min_batch_size"], flags.get("opt_batch_size"))
    trt = import_tensorrt()
    device = _gpu(run)
    platform = current_platform(trt, device)
    engine = Path(flags.get("engine_file") or onnx_path.with_suffix(".engine"))
    engine.parent.mkdir(parents=True, exist_ok=True)
    data_type = flags["data_type"]
    with temporary_directory(engine.parent) as work:
        source = onnx_path
        if data_type == "int8" and not is_quantized(onnx_path):
            source = Path(work) / "int8.onnx"
            cache = Path(flags.get("cal_cache_file") or engine.with_suffix(".cal.bin"))
            batches = calibration_batches(task, run, onnx_path)
            echo(f"Calibrating {onnx_path} on {sum(len(next(iter(b.values()))) for b in batches)} inputs ...")
            quantize_int8(onnx_path, source, batches, cache_path=cache)
            echo(f"Wrote TensorRT calibration cache {cache}")
        build_tensorrt_engine(source, engine, profile, data_type,
                              max_workspace_size=int(flags["max_workspace_size"] * 2 ** 30),
                              strict_type_constraints=bool(flags.get("strict_type_constraints")))
    inputs, outputs = onnx_io(onnx_path)
    record = {"format": RECORD_FORMAT, **dataclasses.asdict(platform), "data_type": data_type,
              "onnx": str(onnx_path), "inputs": {name: list(shapes) for name, shapes in profile.items()},
              "outputs": outputs}
    write_atomic(record_path(engine), json.dumps(record, indent=2) + "\n")
    echo(f"Wrote TensorRT engine {engine} ({data_type}, TensorRT {platform.tensorrt_version}, {platform.gpu}, "
         f"compute {platform.compute_capability}) and its record {record_path(engine)}")
    return 0


# --------------------------------------------------------------------------- evaluate / inference
class TensorRTPredictor(Predictor):
    """A TensorRT engine run on torch CUDA tensors; outputs in the ONNX graph's order, as OnnxPredictor's."""

    def __init__(self, path, preprocess, manifest: dict, device: torch.device):
        super().__init__(preprocess, manifest, str(path))
        trt = import_tensorrt()
        self.device = device
        self.engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise TaoctlError(f"{path}: TensorRT {trt.__version__} cannot load this engine (not an engine, or built "
                              f"by another TensorRT or for another GPU): rebuild it with gen_trt_engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                       for n in names}
        low, _, high = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.min_batch, self.max_batch = low[0], high[0]

    def __call__(self, inputs):
        batch = self.preprocess(inputs)
        named = batch if isinstance(batch, dict) else {self.inputs[0]: batch}
        rows = len(next(iter(named.values())))
        parts = [self._run({n: a[start:start + self.max_batch] for n, a in named.items()})
                 for start in range(0, rows, self.max_batch)]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.outputs))]

    def _run(self, named: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(next(iter(named.values())))
        short = self.min_batch - rows  # below the profile's smallest batch: repeat the last row, drop its outputs
        tensors = []
        for name in self.inputs:
            array = np.asarray(named[name])
            if short > 0:
                array = np.concatenate([array, np.repeat(array[-1:], short, axis=0)])
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self.dtypes[name])
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            tensors.append(tensor)
        results = []
        for name in self.outputs:
            tensor = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                 device=self.device)
            self.context.set_tensor_address(name, tensor.data_ptr())
            results.append(tensor)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TaoctlError(f"{self.source}: TensorRT failed to run the engine")
        stream.synchronize()
        return [(t.float() if t.is_floating_point() else t)[:rows].cpu().numpy() for t in results]


def is_engine(path) -> bool:
    return Path(path).suffix.lower() in ENGINE_SUFFIXES or record_path(path).exists()


def deploy_predictor(task: Task, run: Run, model_path) -> Predictor:
    """A TensorRT engine (its record checked against this machine) or an exported ONNX (onnxruntime)."""
    if is_onnx(model_path):
        return task.predictor(run, model_path)
    if Path(model_path).suffix.lower() == ".etlt":  # taoctl writes TAO 4's .etlt as plain ONNX
        manifest = task.onnx_manifest(run, model_path)
        return OnnxPredictor(model_path, task.preprocess(manifest), manifest)
    if not is_engine(model_path):
        raise TaoctlError(f"-m {model_path}: deploy {run.subtask} takes a TensorRT engine "
                          f"({', '.join(ENGINE_SUFFIXES)}) or an .onnx; a model file runs with "
                          f"`taoctl model {task.name} {run.subtask}`")
    if not Path(model_path).is_file():
        raise TaoctlError(f"-m {model_path}: no such file")
    trt = import_tensorrt()
    device = _gpu(run)
    record = record_path(model_path)
    if record.exists():
        warning = check_engine_record(model_path, json.loads(record.read_text()), current_platform(trt, device))
        if warning:
            echo(warning)
    else:
        echo(f"Notice: {model_path} has no {record.name} (not built by taoctl); TensorRT checks it itself")
    manifest = task.onnx_manifest(run, model_path)
    return TensorRTPredictor(model_path, task.preprocess(manifest), manifest, device)


def run_evaluate(task: Task, run: Run) -> int:
    model_path = run.flags["model_path"]
    predictor = deploy_predictor(task, run, model_path)
    evaluator = task.evaluator(run, predictor.manifest)
    evaluator.write(evaluator.run(predictor), run.results_dir or Path(model_path).resolve().parent)
    return 0


def run_inference(task: Task, run: Run) -> int:
    task.infer(run, deploy_predictor(task, run, run.flags["model_path"]))
    return 0


_RUNNERS = {"gen_trt_engine": run_gen_trt_engine, "evaluate": run_evaluate, "inference": run_inference}


def run_deploy(action: str, task_ref: str, flags: dict) -> int:
    """What every deploy command calls: the runners' shared set-up (flag ranges, --log_file, spec with
    overrides, --dry-run, status.json), then the action."""
    from taoctl.engine import runners
    from taoctl.engine.spec import parse_overrides
    from taoctl.outputs import refuse_overwrites

    task = resolve(task_ref)
    runners.check_flag_ranges(flags)
    overrides = parse_overrides(flags.pop("overrides", ()) or ())
    results_dir = flags.get("results_dir")
    run = Run(subtask=action, flags=flags, spec_path=flags.get("experiment_spec"),
              results_dir=Path(results_dir) if results_dir else None, dist=distributed.current())
    refuse_overwrites(*runners._subtask_paths(task, run))
    with runners.tee_output(flags.get("log_file")) as log:
        if run.spec_path:
            run.spec = task.load_spec(run, overrides)
            refuse_overwrites(*runners._subtask_paths(task, run))
        elif overrides:
            raise TaoctlError(f"spec overrides ({overrides[0]} ...) need a spec file: pass -e")
        log.open()  # only now: the log file is known to be none of the inputs
        if flags.get("dry_run"):
            return runners._dry_run(task, run)
        with runners._subtask_status(run, main=True):
            return _RUNNERS[action](task, run)
