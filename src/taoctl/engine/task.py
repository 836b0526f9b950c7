"""The task contract: what a task gives the engine's runners (``engine/runners.py``).

A task (classification, detectnet_v2, yolo_v3, an NLP task, ...) is a subclass of :class:`Task`
that answers, for one subtask invocation (:class:`Run`), the questions only it can answer:

* **model**: ``build_model`` (from the spec, for training), ``model_from_manifest`` (from a model
  file, for everything else), ``manifest`` (what a model file records so that it rebuilds
  without the spec), ``model_name`` (TAO's checkpoint name);
* **data**: ``train_data`` (the loader and what validation needs), ``preprocess`` (raw inputs to
  model inputs), ``sample_inputs`` (real raw inputs for pruning refits, export parity checks and
  INT8 calibration), ``calibration_tensorfile``;
* **training**: ``training_step`` (loss and logged values), ``optimization`` (optimizer and
  schedule from the spec through ``engine.optim``), ``validation`` (the evaluator with its
  period and the metric that picks the best checkpoint), ``train_hooks``;
* **evaluation and inference**: ``evaluator`` (ONE evaluator, run both by training's periodic
  validation and by the ``evaluate`` subtask, on a :class:`Predictor` for a live model, a
  model file or an exported ``.onnx``), ``infer`` (post-processing and writers);
* **export**: ``export_adapter`` (the deployed module with its input/output names, dynamic
  axes, parity tolerances and DeepStream fields); heads that pruning and pretrained loading
  must keep whole are the model's ``head_names``.

Everything else (spec loading, ``--dry-run``, ``-k``, results dir, seeds, devices, DDP,
progress, ``--log_file``, ``status.json``, the export pipeline, pruning) is the runners'.
The engine never imports a task: the launcher names a task's :class:`Task` object by its
dotted path (``taoctl.tasks.classification.task:TASK``) and the runner imports it.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from taoctl.engine import distributed, modelfile
from taoctl.errors import TaoctlError


@dataclasses.dataclass
class Run:
    """One subtask invocation: its flags, its loaded spec, and where and on what it runs."""

    subtask: str
    flags: dict[str, Any]
    spec_path: str | None = None
    spec: Any = None
    results_dir: Path | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dist: distributed.DistInfo = dataclasses.field(default_factory=distributed.DistInfo)

    def flag(self, name: str, default=None):
        value = self.flags.get(name)
        return default if value is None else value

    @property
    def key(self) -> str | None:
        return self.flags.get("key") or None

    @property
    def strict(self) -> bool:
        return bool(self.flags.get("strict"))

    @property
    def use_amp(self) -> bool:
        return bool(self.flags.get("use_amp")) and self.device.type == "cuda"

    def echo(self, message: str) -> None:
        """Print on the main process only (every rank runs the same code under DDP)."""
        if self.dist.is_main:
            print(message, flush=True)


class Evaluator:
    """One evaluation of a fixed dataset, run by training's periodic validation AND by ``evaluate``.

    ``run(predictor)`` gives the full report (JSON-able); ``summary(report)`` the values logged
    per validation epoch (``val_`` is prefixed by the trainer); ``write(report, out_dir)`` prints
    the report as the task's users expect it and writes ``results.json`` and the task's files.
    """

    def run(self, predictor: "Predictor") -> dict:
        raise NotImplementedError

    def summary(self, report: dict) -> dict[str, float]:
        raise NotImplementedError

    def write(self, report: dict, out_dir: Path) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class Validation:
    """Training's periodic evaluation: the evaluator, how often, and the metric naming the best epoch."""

    evaluator: Evaluator
    period: int = 1
    first_epoch: int = 1
    best_metric: str | None = None
    mode: str = "max"


class TrainData:
    """What a task's ``train_data`` hands the runner: the loader, plus whatever its step and evaluator need."""

    def __init__(self, loader, **extras):
        self.loader = loader
        self.__dict__.update(extras)


class Predictor:
    """Deployed outputs for a batch of model inputs: a live model, a model file or an exported ONNX.

    Inputs are what the task's data gives (e.g. uint8 N x C x H x W images); ``preprocess``
    turns them into the model's float inputs (normalisation). Outputs are what the exported
    graph outputs (the export adapter's module), as a list of arrays, so an evaluator sees the
    same thing from PyTorch and from onnxruntime. ``manifest`` is the model file's (for an
    ONNX file, what the task rebuilt of it from the spec and flags).
    """

    def __init__(self, preprocess: Callable[[np.ndarray], np.ndarray], manifest: dict, source: str):
        self.preprocess = preprocess
        self.manifest = manifest
        self.source = source

    def __call__(self, inputs: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class TorchPredictor(Predictor):
    def __init__(self, module: nn.Module, preprocess, manifest: dict, source: str,
                 device: torch.device | None = None, amp: bool = False):
        from taoctl.engine.model_parallel import spans_devices

        super().__init__(preprocess, manifest, source)
        self.device = device or torch.device("cpu")
        # A model split across GPUs stays where it is; its first layer takes the inputs.
        self.module = (module if spans_devices(module) else module.to(self.device)).eval()
        self.amp = amp and self.device.type == "cuda"

    def __call__(self, inputs):
        batch = self.preprocess(inputs)
        named = batch if isinstance(batch, dict) else None  # several inputs (token ids, mask): by name
        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
                   for name, array in (named or {"": batch}).items()}
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = self.module(**tensors) if named else self.module(tensors[""])
        outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        return [(o.float() if o.is_floating_point() else o).cpu().numpy() for o in outputs]


class OnnxPredictor(Predictor):
    def __init__(self, path, preprocess, manifest: dict, threads: int | None = None):
        from taoctl.engine.export import ort_session

        super().__init__(preprocess, manifest, str(path))
        self.session = ort_session(path, threads)
        # An .onnx carries no manifest: the task built one from the spec, so a graph of another model
        # (another task's, another input size) is named here, not by an onnxruntime error mid-run.
        expected = manifest.get("input_shape")
        declared = self.input_shape
        if expected and len(declared) == len(expected) and any(
                isinstance(got, int) and got != want for got, want in zip(declared, expected)):
            raise TaoctlError(f"{path}: the ONNX model takes input {list(declared)}, the spec gives "
                              f"{list(expected)}: is it this task's model, exported for this spec?")

    @property
    def input_shape(self) -> tuple:
        return tuple(self.session.get_inputs()[0].shape[1:])

    def __call__(self, inputs):
        from taoctl.engine.export import run_onnx

        outputs = run_onnx(self.session, self.preprocess(inputs))
        return list(outputs.values()) if isinstance(outputs, dict) else list(outputs)


def is_onnx(path) -> bool:
    return str(path).lower().endswith(".onnx")


class Task:
    """Base of every task; the defaults are what most TAO vision tasks do. See the module docstring."""

    name: str = ""  # the task's name in model files' manifests and the registry
    spec_module: str = ""  # dotted name of the task's torch-free spec module (its KINDS)
    spec_kind: str = "experiment"

    # ------------------------------------------------------------------ spec
    @property
    def spec(self):
        return importlib.import_module(self.spec_module)

    def spec_kind_for(self, run: "Run") -> str:
        """Which of the spec module's ``KINDS`` this invocation's spec is (detectnet_v2's inference also takes
        TAO's inference spec)."""
        return self.spec_kind

    def load_spec(self, run: "Run", overrides=()):
        """The invocation's spec, with the fields ``required_spec`` names required."""
        from taoctl.engine.spec import load

        return load(run.spec_path, self.spec.KINDS[self.spec_kind_for(run)],
                    subtask=self.required_spec(run.subtask, run.flags), overrides=overrides)

    def required_spec(self, subtask: str, flags: dict) -> str | None:
        """Whose required fields the spec must set (a subtask's name; None: only the always-required)."""
        return subtask

    def default_specs(self) -> dict[str, str]:
        """``download_specs``' files: ``{name: text}`` of the ``specs/`` folder beside the task's spec module."""
        folder = Path(self.spec.__file__).parent / "specs"
        if not folder.is_dir():
            raise TaoctlError(f"{self.name} has no default specs to download")
        return {path.name: path.read_text() for path in sorted(folder.glob("*.yaml"))}

    def dry_run_paths(self, run: Run) -> dict[str, str | None]:
        """``{flag or what: path}`` that ``--dry-run`` checks besides the spec's path fields (train):
        the input paths the flags name, each under the flag the user typed for it."""
        from taoctl.engine.commands import flag_names

        flags = flag_names()
        return {flags[name]: run.flags[name] for name in ("model_path", "image", "image_dir", "cal_image_dir",
                                                          "classmap", "classmap_json") if run.flags.get(name)}

    # ------------------------------------------------------------------ model
    def build_model(self, run: Run, data: TrainData) -> nn.Module:
        """The model to train, pretrained weights loaded (``model.head_names``: heads kept whole)."""
        raise NotImplementedError

    def model_from_manifest(self, manifest: dict) -> nn.Module:
        raise NotImplementedError

    def manifest(self, run: Run, data: TrainData, spec_text: str) -> dict:
        """What a model file records so that it rebuilds, preprocesses and names its outputs without the spec."""
        raise NotImplementedError

    def model_name(self, run: Run) -> str:
        return self.name

    def load_model(self, path, key: str | None) -> tuple[nn.Module, dict]:
        """A model file of this task (pruned or not), rebuilt from its manifest alone."""
        loaded = modelfile.load_model(path, key)
        manifest = loaded.manifest
        if manifest.get("task") != self.name:
            raise TaoctlError(f"{path} is a {manifest.get('task') or 'non-taoctl'} model, not a {self.name} model")
        model = self.model_from_manifest(manifest)
        if manifest.get("qat"):  # trained with fake quantisation: its quantizers and learned ranges come back,
            from taoctl.engine import qat  # on the layers at the file's (maybe pruned) widths

            modelfile.apply_layer_shapes(model, manifest.get("layers", {}), loaded.state_dict, loaded.path)
            qat.restore_qat(model, manifest["qat"])
        modelfile.load_weights_into(model, loaded)
        return model.eval(), manifest

    def own_manifest(self, path, key: str | None) -> dict | None:
        """The manifest of ``path`` when it is a taoctl model file of this task (retraining, pruned or
        not), or None for any other weights file (ImageNet, a classifier, an NGC .hdf5)."""
        try:
            manifest = modelfile.load_model(path, key).manifest
        except TaoctlError:
            return None
        return manifest if manifest.get("task") == self.name else None

    def preprocess(self, manifest: dict) -> Callable:
        """Raw inputs (as the task's data gives them) -> the model's input array, or a dict of arrays by
        the export adapter's input names for a model with several inputs (token ids, attention mask)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def training_device(self, run: Run) -> torch.device:
        from taoctl.engine.device import select_device

        return select_device(run.flag("gpus", 1), run.flags.get("gpu_index"), bool(run.flags.get("use_amp")))

    def train_data(self, run: Run) -> TrainData:
        raise NotImplementedError

    def training_step(self, run: Run, model: nn.Module, data: TrainData) -> Callable:
        """``step(net, batch) -> (loss, {name: float})``, what the trainer calls per batch."""
        raise NotImplementedError

    def optimization(self, run: Run, steps_per_epoch: int):
        """The spec's optimizer, regularizer and schedule: an ``engine.optim.OptimizationSpec`` (its adapters
        read TAO's makenet and cv/common messages); the runner builds and steps them."""
        raise NotImplementedError

    def epochs(self, run: Run) -> int:
        raise NotImplementedError

    def checkpoint_interval(self, run: Run) -> int:
        return 1

    def seed(self, run: Run) -> int:
        return 42

    def validation(self, run: Run, data: TrainData) -> Validation | None:
        return None

    def quantization_aware(self, run: Run) -> bool:
        """Train with fake INT8 quantisation (``engine.qat``; a TAO spec's ``enable_qat``): export then writes
        INT8 from the ranges training learned, with no calibration data."""
        return False

    def trainer_options(self, run: Run) -> dict:
        """The trainer's optional behaviour the spec asks for: ``clip_grad_norm``, ``ema_decay``."""
        return {}

    def train_hooks(self, run: Run, data: TrainData) -> list:
        return []

    def after_training(self, run: Run, trainer) -> None:
        """Print the run's closing summary (main process)."""

    # ------------------------------------------------------------------ evaluate / inference
    def predictor(self, run: Run, model_path) -> Predictor:
        """A model file through PyTorch, or an exported .onnx through onnxruntime, with the same outputs."""
        if is_onnx(model_path):
            manifest = self.onnx_manifest(run, model_path)
            return OnnxPredictor(model_path, self.preprocess(manifest), manifest)
        model, manifest = self.load_model(model_path, run.key)
        deployed = self.export_adapter(run, model, manifest).runtime_module()
        return TorchPredictor(deployed, self.preprocess(manifest), manifest, str(model_path), run.device, run.use_amp)

    def onnx_manifest(self, run: Run, onnx_path) -> dict:
        """What an exported .onnx (which carries no manifest) needs from the spec and flags to be evaluated."""
        raise TaoctlError(f"{onnx_path}: {self.name} evaluates model files only, not .onnx")

    def default_model_path(self, run: Run) -> str | None:
        return None

    def model_path_hint(self, run: Run) -> str:
        return ""

    def evaluator(self, run: Run, manifest: dict) -> Evaluator:
        """The evaluate subtask's evaluator (the same class training validates with)."""
        raise NotImplementedError

    def infer(self, run: Run, predictor: Predictor) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ data for prune / export
    def sample_inputs(self, run: Run, manifest: dict, folder: str, count: int) -> np.ndarray:
        """Up to ``count`` raw model inputs from ``folder`` (a seeded choice), as ``preprocess`` takes them:
        pruning's refit, the export's parity check and INT8 calibration run on them."""
        raise TaoctlError(f"{self.name} takes no sample images")

    def default_sample_folder(self, run: Run) -> str | None:
        """Where export finds real inputs when no --cal_image_dir is given (the spec's data), or None."""
        return None

    def calibration_tensorfile(self, run: Run) -> np.ndarray:
        """calibration_tensorfile's raw inputs (max_batches x the spec's batch size), from the spec's data."""
        raise NotImplementedError

    # ------------------------------------------------------------------ prune / export
    def check_prune_flags(self, run: Run) -> None:
        """Refuse the task's own prune flags in combinations it cannot run, before any work."""

    def after_prune(self, run: Run, model: nn.Module, manifest: dict, report, calibration) -> dict | None:
        """Task-specific pruning after the engine's (e.g. a classifier's inputs); returns what to record."""
        return None

    def export_adapter(self, run: Run, model: nn.Module, manifest: dict):
        """The model as deployed, for the engine's exporter and for evaluation: an ``engine.export.ExportAdapter``
        (module, input/output names, dynamic axes, parity tolerances, INT8 agreement, DeepStream fields)."""
        raise NotImplementedError

    def after_export(self, run: Run, manifest: dict, output: Path) -> None:
        """Files a deployment needs beside the exported model (e.g. a class map)."""

    def dataset_convert(self, run: Run) -> None:
        """A spec-driven dataset_convert (the NeMo tasks'): reads and writes what the spec names."""
        raise NotImplementedError


def resolve(ref: str) -> Task:
    """The Task object a ``module:attribute`` reference names (the launcher passes names, never objects)."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)
