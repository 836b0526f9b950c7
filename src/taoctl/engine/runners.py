"""The runners: every subtask's set-up done once, for any task (the task contract: ``engine/task.py``).

``run_subtask`` is what every subtask command calls (``engine/commands.py``). It resolves the
task, checks the flags' ranges, copies the console into ``--log_file``, loads the spec with
its overrides, answers ``--dry-run``, writes ``status.json`` (STARTED, then SUCCESS or FAILURE
with its message) for subtasks given a results dir, picks the device, and runs the subtask:

* train: results dir, seeds, DDP, data, model, optimizer, the trainer with its hooks;
* evaluate / inference: a predictor over a model file or an exported ``.onnx``;
* prune: the engine's channel pruning with the model's heads kept whole, optional refit;
* export: the engine's one exporter over the task's export adapter;
* calibration_tensorfile: real model inputs sampled into one ``.npy``.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import math
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

from taoctl.engine import distributed, optim
from taoctl.engine.cli import Interrupted, echo, finish_dry_run, interrupt_signal, temporary_directory
from taoctl.engine.task import Run, Task, resolve
from taoctl.errors import TaoctlError
from taoctl.outputs import OverwriteError, refuse_overwrites

# Subtasks that run the model in mixed precision with --use_amp (on a GPU).
_AMP_SUBTASKS = ("train", "finetune", "evaluate", "inference", "infer")
# Subtasks that train (the trainer writes their status.json lines and claims the results dir).
TRAINING_SUBTASKS = ("train", "finetune")
# Real inputs the exported model is checked on against PyTorch.
CHECK_SAMPLES = 16

# Flags whose value must be at least 1 (a 0 or negative one crashed deep inside, or silently did nothing).
_AT_LEAST_ONE = ("gpus", "batch_size", "batches", "max_batches", "max_batch_size", "cal_images", "init_epoch",
                 "pruning_granularity", "num_nodes")
_FLAG_NAMES = {"gpus": "--gpus", "batch_size": "--batch_size", "batches": "--batches", "max_batches": "--max_batches",
               "max_batch_size": "--max_batch_size", "cal_images": "--cal_images", "init_epoch": "--init_epoch",
               "pruning_granularity": "--pruning_granularity", "num_nodes": "--num_nodes",
               "pruning_threshold": "--pruning_threshold", "min_num_filters": "--min_num_filters"}


def check_flag_ranges(flags: dict) -> None:
    """One line naming the flag and its allowed range for a value no subtask can use."""
    for name in _AT_LEAST_ONE:
        value = flags.get(name)
        if value is not None and value < 1:
            raise TaoctlError(f"{_FLAG_NAMES[name]} must be >= 1, got {value}")
    threshold = flags.get("pruning_threshold")
    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise TaoctlError(f"--pruning_threshold must be a number in [0, 1], got {threshold}")
    filters = flags.get("min_num_filters")
    if filters is not None and filters < 0:
        raise TaoctlError(f"--min_num_filters must be >= 0, got {filters}")
    processes = flags.get("num_processes")
    if processes is not None and processes != -1 and processes < 1:
        raise TaoctlError(f"-np/--num_processes must be >= 1 (or -1: one per GPU), got {processes}")


def run_subtask(subtask: str, task_ref: str, flags: dict, runner: str | None = None) -> int:
    """Run ``subtask`` of the task ``task_ref`` names with the runner of its flag set (``runner``, a key of
    ``engine.commands.FLAGS``: the NeMo tasks' ``nemo_train`` ...; default the subtask's name)."""
    from taoctl.engine.spec import parse_overrides

    task = resolve(task_ref)
    check_flag_ranges(flags)
    overrides = parse_overrides(flags.pop("overrides", ()) or ())
    results_dir = flags.get("results_dir")
    run = Run(subtask=subtask, flags=flags, spec_path=flags.get("experiment_spec"),
              results_dir=Path(results_dir) if results_dir else None, dist=distributed.current())
    main = run.dist.is_main and int(os.environ.get("RANK", "0")) == 0
    refuse_overwrites(*_subtask_paths(task, run))  # the flags' paths
    with tee_output(flags.get("log_file") if main else None) as log, _interrupt_named(subtask):
        if run.spec_path:
            run.spec = task.load_spec(run, overrides)
            refuse_overwrites(*_subtask_paths(task, run))  # and the paths the spec names
        elif overrides:
            raise TaoctlError(f"spec overrides ({overrides[0]} ...) need a spec file: pass -e")
        log.open()  # only now: the log file is known to be none of the inputs
        if flags.get("dry_run"):
            return _dry_run(task, run)
        if flags.get("use_amp") and subtask not in _AMP_SUBTASKS:
            echo(f"Notice: --use_amp has no effect on {subtask} (it applies to {', '.join(_AMP_SUBTASKS)}).")
        with _subtask_status(run, main):
            return _RUNNERS[runner or subtask](task, run)


@contextlib.contextmanager
def _interrupt_named(subtask: str):
    """Ctrl-C / SIGTERM as one line naming the subtask (exit 130 / 143), also when a library turned the
    interrupt into an exception of its own (torch's exporter does)."""
    try:
        yield
    except Interrupted:
        raise
    except BaseException as exc:
        if not (isinstance(exc, KeyboardInterrupt) or interrupt_signal()):
            raise
        raise Interrupted(subtask, interrupt_signal() or signal.SIGINT) from None


# What a subtask reads and what it writes, by flag (click) name; export's --cal_data_file is either.
_INPUT_FLAGS = ("experiment_spec", "model_path", "classmap", "classmap_json", "image", "image_dir", "cal_image_dir")
_OUTPUT_FLAGS = ("output_file", "output", "output_dir", "cal_cache_file", "engine_file", "log_file", "results_dir")


def _subtask_paths(task: Task, run: Run) -> tuple[list, list]:
    """``(inputs, outputs)`` as ``(flag or spec field, path)`` for ``taoctl.outputs.refuse_overwrites``.

    Inputs are the flags' files and folders plus, once the spec is loaded, every path field of
    its kind (a glob by its matches), so that e.g. ``-r`` inside the training data is refused.
    """
    from taoctl.engine.commands import flag_names
    from taoctl.engine.spec import path_values

    names = flag_names()
    flags = run.flags
    inputs = [(names[name], flags[name]) for name in _INPUT_FLAGS if flags.get(name)]
    outputs = [(names[name], flags[name]) for name in _OUTPUT_FLAGS if name in flags]
    if flags.get("cal_data_file"):
        cal_data = (names["cal_data_file"], flags["cal_data_file"])
        (inputs if _reads_cal_data_file(flags) else outputs).append(cal_data)
    if run.spec is not None:
        inputs += [(field, match) for field, value in path_values(run.spec, task.spec.KINDS[task.spec_kind_for(run)])
                   for match in glob.glob(value) or [value]]
    return inputs, outputs


class _LogFile:
    """``--log_file`` for :func:`tee_output`: what the console shows is kept in memory until :meth:`open`."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = path
        self.handle = None
        self.pending = io.StringIO()

    def open(self) -> None:
        """Create (or append to) the log file and write what was kept so far; later output goes straight in."""
        if self.path and self.handle is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a")
            self.handle.write(self.pending.getvalue())

    def write(self, text: str) -> None:
        (self.handle or self.pending).write(text)

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()


@contextlib.contextmanager
def tee_output(log_file: str | os.PathLike | None):
    """Copy stdout and stderr into ``log_file`` (``--log_file``) while the block runs, its error line included.

    Yields the log: the file is opened by ``log.open()``, once the caller knows it is no input (the
    spec's paths are known only after loading it); what came before is written then. A block that
    ends without opening it writes it at the end, unless an output was refused (the log may be
    that output: nothing is written).
    """
    log = _LogFile(log_file)
    if not log_file:
        yield log
        return

    class Tee(io.TextIOBase):
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            log.write(text)
            return self.stream.write(text)

        def flush(self):
            log.flush()
            self.stream.flush()

        def isatty(self):
            return self.stream.isatty()

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
    try:
        yield log
    except BaseException as exc:  # the console gets this line from run_command, after the block
        if isinstance(exc, OverwriteError) and log.handle is None:
            raise  # the refused output may be the log itself
        log.open()
        if isinstance(exc, TaoctlError):
            log.write(f"taoctl: {exc}\n")
        elif isinstance(exc, KeyboardInterrupt) or interrupt_signal():
            log.write("taoctl: interrupted\n")
        else:
            log.write(f"taoctl: internal error: {type(exc).__name__}: {exc}\n")
        raise
    else:
        log.open()
    finally:
        sys.stdout, sys.stderr = saved
        if log.handle is not None:
            log.handle.close()


def _dry_run(task: Task, run: Run) -> int:
    echo(f"plan: {task.name} {run.subtask}" + (f" with {run.spec_path}" if run.spec_path else ""))
    paths = task.dry_run_paths(run)
    if run.spec is None:
        missing = [f"{flag}: {path} does not exist" for flag, path in paths.items()
                   if path and not os.path.exists(path)]
        if missing:
            raise TaoctlError("dry run: " + "; ".join(missing))
        echo("Dry run OK: every path the flags name exists.")
        return 0
    fields = None if run.subtask in TRAINING_SUBTASKS else ()
    return finish_dry_run(run.spec_path, run.spec, task.spec.KINDS[task.spec_kind_for(run)], paths, fields=fields)


@contextlib.contextmanager
def _subtask_status(run: Run, main: bool):
    """status.json lines, as TAO writes them, for a subtask given a results dir (on the main process).

    Train's trainer writes its own lines epoch by epoch; here train gets a FAILURE line when it
    fails without the trainer having written one (bad data, an arch the model cannot build, at
    startup); the other subtasks get STARTED, then SUCCESS or FAILURE. A failed run leaves a
    results dir that held nothing before holding only status.json.
    """
    if run.results_dir is None or not main:
        yield
        return
    from taoctl.engine.trainer import StatusHook

    held_nothing = not run.results_dir.is_dir() or not any(run.results_dir.iterdir())
    status = StatusHook(run.results_dir / "status.json")
    written_before = status.path.stat().st_size if status.path.is_file() else 0
    marker_before = _run_marker(run.results_dir)
    if run.subtask not in TRAINING_SUBTASKS:
        run.results_dir.mkdir(parents=True, exist_ok=True)
        status.write("STARTED", f"Starting {run.subtask}.")
    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or interrupt_signal() is not None
        what = "Training" if run.subtask in TRAINING_SUBTASKS else run.subtask.capitalize()
        message = f"{what} interrupted." if interrupted else f"{what} failed: {exc}"
        claimed = _run_marker(run.results_dir) != marker_before
        _record_failure(run, status, written_before, message, held_nothing, claimed)
        raise
    if run.subtask not in TRAINING_SUBTASKS:
        status.write("SUCCESS", f"{run.subtask.capitalize()} finished successfully.")


def _run_marker(results_dir: Path) -> tuple[int, int] | None:
    """Which run marker (``resultsdir.RUN_FILE``) the dir holds: a claim by train writes a new file."""
    from taoctl.engine.resultsdir import RUN_FILE

    try:
        marker = (results_dir / RUN_FILE).stat()
    except OSError:
        return None
    return marker.st_ino, marker.st_mtime_ns


def _record_failure(run: Run, status, written_before: int, message: str, held_nothing: bool,
                    claimed: bool) -> None:
    """status.json's FAILURE line for a failed subtask; a results dir that held nothing before is cleared.

    Nothing is written into a dir another run holds (its lock), nor by a train into a dir holding
    checkpoints that it did not claim (``claimed``: it rewrote the run marker; refused as another
    spec's dir, that dir's status is that run's); a FAILURE line the trainer wrote is not repeated;
    a checkpoint is never removed (a re-run resumes from it). A write that fails is ignored: the
    subtask's own error is the one to report.
    """
    import fcntl

    from taoctl.engine.resultsdir import LOCK_FILE, _has_checkpoint

    results_dir = run.results_dir
    lock_path = results_dir / LOCK_FILE
    with contextlib.ExitStack() as held:
        try:
            results_dir.mkdir(parents=True, exist_ok=True)
            if lock_path.exists():
                fcntl.lockf(held.enter_context(open(lock_path, "a")), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # not writable, or another run holds the dir: leave it as it is
        if run.subtask in TRAINING_SUBTASKS and not claimed and _has_checkpoint(results_dir):
            return
        if not _failure_written_since(status.path, written_before):
            with contextlib.suppress(OSError):
                status.write("FAILURE", message)
        if held_nothing and not _has_checkpoint(results_dir):
            for entry in results_dir.iterdir():
                if entry.name in ("status.json", LOCK_FILE):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)  # while this process holds its lock


def _failure_written_since(path: Path, offset: int) -> bool:
    """Whether status.json got a FAILURE line after its first ``offset`` bytes (all of it when it shrank)."""
    import json

    try:
        with open(path, "rb") as handle:
            handle.seek(offset if os.fstat(handle.fileno()).st_size >= offset else 0)
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            if json.loads(line).get("status") == "FAILURE":
                return True
        except (ValueError, AttributeError):
            continue
    return False


def _inference_device(run: Run):
    from taoctl.engine.device import select_device

    return select_device(run.flag("gpus", 1), run.flags.get("gpu_index"), bool(run.flags.get("use_amp")))


# --------------------------------------------------------------------------- train
def run_train(task: Task, run: Run) -> int:
    """Train with the results dir locked by the main process (global rank 0) for the whole run."""
    from taoctl.engine.resultsdir import locked_results_dir

    run.dist = distributed.init_distributed()
    run.device = task.training_device(run)  # before the lock makes the dir: no devices, nothing written
    init_epoch, epochs = run.flag("init_epoch", 1), task.epochs(run)
    if init_epoch > epochs:
        raise TaoctlError(f"--init_epoch {init_epoch} is beyond the spec's {epochs} epochs: nothing would be trained")
    with locked_results_dir(run.results_dir) if run.dist.is_main else contextlib.nullcontext():
        return _train(task, run)


def _train(task: Task, run: Run) -> int:
    from taoctl.engine.resultsdir import prepare_results_dir
    from taoctl.engine.spec import read_text
    from taoctl.engine.trainer import EarlyStoppingHook, EvalHook, Trainer, seed_everything

    spec_text = read_text(run.spec_path)
    if run.dist.is_main:
        prepare_results_dir(run.results_dir, spec_text, bool(run.flags.get("force")), task=task.name)
    distributed.barrier()
    seed = task.seed(run)
    seed_everything(seed + run.dist.rank)
    data = task.train_data(run)
    model = task.build_model(run, data)
    manifest = task.manifest(run, data, spec_text)
    if task.quantization_aware(run):
        from taoctl.engine import qat

        # Ranges start from the first training batch, then follow the activations as training moves them.
        qat.prepare_qat(model, None)
        manifest["qat"] = qat.qat_state(model)
        run.echo(f"Quantization-aware training: {len(qat.quantized_layers(model))} layers train with fake INT8")
    if run.dist.is_main:
        run.echo(model_summary(model, manifest.get("input_shape")))
    optimization = task.optimization(run, len(data.loader))
    optimizer = optim.build_optimizer(model, optimization.optimizer, optimization.regularizer,
                                      optimization.schedule.base_lr)
    scheduler = optim.build_scheduler(optimizer, optimization.schedule, optimization.optimizer.decay)
    step = task.training_step(run, model, data)
    if optimization.regularizer.kind == "L1":
        step = _regularized(step, optimization.regularizer, model)
    hooks = list(task.train_hooks(run, data))
    validation = task.validation(run, data)
    if validation is not None:
        hooks.append(EvalHook(_validate(task, run, validation.evaluator, manifest), period=validation.period,
                              first_epoch=validation.first_epoch, best_metric=validation.best_metric,
                              mode=validation.mode))
    if isinstance(optimization.schedule, optim.EarlyStoppingAnnealingSchedule):
        if validation is None:
            run.echo("early_stopping_annealing_schedule without validation: the learning rate stays at its maximum "
                     "after the soft start and every epoch is trained")
        else:
            hooks.append(EarlyStoppingHook(optimization.schedule))  # after EvalHook: it reads val_cost
    trainer = Trainer(model, optimizer, data.loader, step, run.results_dir, task.epochs(run), task.model_name(run),
                      manifest, key=run.key, scheduler=scheduler, checkpoint_interval=task.checkpoint_interval(run),
                      device=run.device, amp=bool(run.flags.get("use_amp")), seed=seed,
                      init_epoch=run.flag("init_epoch", 1), hooks=hooks, **task.trainer_options(run))
    trainer.train()
    if run.dist.is_main:
        task.after_training(run, trainer)
    return 0


def parameter_counts(model) -> str:
    """Keras's summary totals, which TAO prints and its users read to see what pruning did."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"Total params: {total:,}\nTrainable params: {trainable:,}\n"
            f"Non-trainable params: {total - trainable:,}")


# A big model's summary lists its blocks, not every op: at most this many rows.
SUMMARY_ROWS = 40


def model_summary(model, input_shape=None, max_rows: int = SUMMARY_ROWS) -> str:
    """Keras's ``model.summary()``: one row per layer (name, type, output shape, parameters), then
    :func:`parameter_counts`. The layers are the model's children, opened level by level into their
    own children while the table stays within ``max_rows``. Output shapes come from one forward pass
    of a zero input of ``input_shape`` (without the batch; the manifest's ``input_shape``) in eval
    mode, which changes no weight, statistic or random state; without a shape (a token model) the
    column stays empty.
    """
    layers = summary_layers(model, max_rows)
    shapes = output_shapes(model, layers, input_shape) if input_shape else {}
    header = ("Layer (type)", "Output Shape", "Param #")
    rows = [(f"{name} ({type(module).__name__})", shapes.get(name, ""),
             f"{sum(p.numel() for p in module.parameters()):,}") for name, module in layers]
    widths = [max(len(row[i]) for row in [header, *rows]) + 3 for i in range(3)]
    line = "".join(text.ljust(width) for text, width in zip(header, widths)).rstrip()
    table = ["_" * sum(widths), line, "=" * sum(widths)]
    table += ["".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(table + ["=" * sum(widths), parameter_counts(model), "_" * sum(widths)])


def summary_layers(model, max_rows: int = SUMMARY_ROWS) -> list:
    """``(qualified name, module)`` of the layers a summary lists. A module holding parameters of its
    own is never opened, so the rows' parameters add up to the model's."""
    layers = list(model.named_children()) or [(type(model).__name__, model)]
    while True:
        opened, changed = [], False
        for name, module in layers:
            children = list(module.named_children())
            if children and not any(True for _ in module.parameters(recurse=False)):
                opened += [(f"{name}.{child}", sub) for child, sub in children]
                changed = True
            else:
                opened.append((name, module))
        if not changed or len(opened) > max_rows:
            return layers
        layers = opened


def output_shapes(model, layers: list, input_shape) -> dict[str, str]:
    """Each listed layer's output shape, Keras-style (``(None, 64, 56, 56)``), from one forward pass
    of a zero input; a layer the forward pass does not call has none."""
    import torch

    shapes: dict[str, str] = {}

    def recorder(name):
        def record(module, inputs, output):
            shapes.setdefault(name, _shape_text(output))
        return record

    handles = [module.register_forward_hook(recorder(name)) for name, module in layers]
    modes = {module: module.training for module in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()  # batch statistics of one zero image would fail or move BatchNorm's running stats
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    return shapes


def _shape_text(output) -> str:
    if hasattr(output, "shape"):
        return "(" + ", ".join(["None", *(str(size) for size in output.shape[1:])]) + ")"
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return "[" + ", ".join(_shape_text(item) for item in output) + "]"
    return "?"


def _validate(task: Task, run: Run, evaluator, manifest: dict):
    """Training's validation: the evaluate subtask's evaluator, on the live model as it would be exported."""
    from taoctl.engine.task import TorchPredictor

    def evaluate(model):
        deployed = task.export_adapter(run, model, manifest).runtime_module()
        predictor = TorchPredictor(deployed, task.preprocess(manifest), manifest, "the model in training", run.device,
                                   run.use_amp)
        return evaluator.summary(evaluator.run(predictor))

    return evaluate


def _regularized(step, regularizer, model):
    """The task's step plus the regularizer's loss term (L1; L2 is the optimizer's weight decay)."""

    def regularized_step(net, batch):
        loss, logs = step(net, batch)
        return loss + optim.regularization_loss(model, regularizer, loss.device), logs

    return regularized_step


# --------------------------------------------------------------------------- evaluate / inference
def _model_path(task: Task, run: Run) -> str:
    """-m, or the model the spec names (the task's default); recorded in the flags for what follows."""
    model_path = run.flags.get("model_path") or task.default_model_path(run)
    if not model_path:
        raise TaoctlError(f"no model to {run.subtask}: pass -m{task.model_path_hint(run)}")
    run.flags["model_path"] = model_path
    return model_path


def run_evaluate(task: Task, run: Run) -> int:
    model_path = _model_path(task, run)
    run.device = _inference_device(run)
    predictor = task.predictor(run, model_path)
    out_dir = run.results_dir or Path(model_path).resolve().parent
    evaluator = task.evaluator(run, predictor.manifest)
    report = evaluator.run(predictor)
    evaluator.write(report, out_dir)
    return 0


def run_inference(task: Task, run: Run) -> int:
    model_path = _model_path(task, run)
    run.device = _inference_device(run)
    predictor = task.predictor(run, model_path)
    task.infer(run, predictor)
    return 0


# --------------------------------------------------------------------------- prune
def run_prune(task: Task, run: Run) -> int:
    import torch

    from taoctl.engine import modelfile
    from taoctl.engine.pruning import prune_model, reconstruct

    model_path, output = run.flags["model_path"], run.flags["output_file"]
    model, manifest = task.load_model(model_path, run.key)
    folder = run.flags.get("cal_image_dir")
    task.check_prune_flags(run)
    calibration = None
    if folder:
        raw = task.sample_inputs(run, manifest, folder, run.flags["cal_images"])
        calibration = torch.from_numpy(task.preprocess(manifest)(raw))
    original = copy.deepcopy(model) if calibration is not None else None
    shape = tuple(manifest["input_shape"])
    report = prune_model(model, shape, threshold=run.flags["pruning_threshold"], normalizer=run.flags["normalizer"],
                         equalization=run.flags["equalization_criterion"],
                         granularity=run.flags["pruning_granularity"], min_filters=run.flags["min_num_filters"],
                         excluded=list(run.flags.get("excluded_layers") or ()),
                         output_layers=list(getattr(model, "head_names", ()) or ()) or None,
                         criterion=run.flags["criterion"])
    if run.flags.get("verbose"):
        for name, before, after in report.layers:
            echo(f"  {name}: {before} -> {after} channels")
    echo(f"Pruned {len(report.layers)} layer groups: {pruned_sizes(report)}")
    if calibration is not None:
        refit = reconstruct(original, model, calibration, report.kept_outputs,
                            log=echo if run.flags.get("verbose") else None)
        echo(f"Refit {len(refit)} layers on {len(calibration)} images from {folder}")
    record = task.after_prune(run, model, manifest, report, calibration)
    kept = {k: v for k, v in manifest.items()
            if k not in ("layers", "format", "format_version", "taoctl_version", "epoch", "metrics")}
    kept["pruning"] = {"source": str(model_path), "threshold": run.flags["pruning_threshold"],
                       "normalizer": run.flags["normalizer"],
                       "equalization_criterion": run.flags["equalization_criterion"],
                       "criterion": run.flags["criterion"], "granularity": run.flags["pruning_granularity"],
                       "min_num_filters": run.flags["min_num_filters"],
                       "excluded_layers": list(run.flags.get("excluded_layers") or ()),
                       "calibration_images": len(calibration) if calibration is not None else 0,
                       **(record or {}),
                       "params_before": report.params_before, "params_after": report.params_after,
                       "macs_before": report.macs_before, "macs_after": report.macs_after}
    modelfile.save_model(output, model, kept, key=run.key)
    echo(f"Wrote {output}")
    return 0


def pruned_sizes(report) -> str:
    return (f"parameters {report.params_before:,} -> {report.params_after:,} ({report.param_ratio * 100:.1f} %), "
            f"MACs {report.macs_before:,} -> {report.macs_after:,} "
            f"({report.macs_after / max(report.macs_before, 1) * 100:.1f} %)")


# --------------------------------------------------------------------------- export
def run_export(task: Task, run: Run) -> int:
    """TAO's export app: every flag honoured, or accepted with one notice where it has no meaning here."""
    from taoctl.engine import export

    flags = run.flags
    if flags.get("onnx_route"):
        echo(f"Notice: --onnx_route {flags['onnx_route']} has no meaning here: taoctl exports from PyTorch with "
             f"torch.onnx.")
    engine_only = [name for flag, name in (("strict_type_constraints", "-s/--strict_type_constraints"),
                                           ("min_batch_size", "--min_batch_size"),
                                           ("opt_batch_size", "--opt_batch_size"),
                                           ("max_workspace_size", "--max_workspace_size"),
                                           ("gpu_index", "--gpu_index")) if flags.get(flag)]
    if engine_only and not flags.get("engine_file"):
        echo(f"Notice: {', '.join(engine_only)} only apply to a TensorRT engine build (--engine_file); export "
             f"itself runs on the CPU.")
    elif flags.get("engine_file") and flags.get("gpu_index"):
        from taoctl.engine.device import select_device

        # TensorRT builds on the current CUDA device, which select_device sets.
        select_device(flags.get("gpus", 1), flags["gpu_index"], quiet=True)
    model_path = flags["model_path"]
    output = Path(flags.get("output_file") or Path(model_path).with_suffix(".onnx"))
    model, manifest = task.load_model(model_path, run.key)
    adapter = task.export_adapter(run, model, manifest)
    from taoctl.engine import qat

    quantization_aware = qat.is_qat(adapter.module)
    if flags.get("force_ptq"):
        echo("Notice: --force_ptq: INT8 scales come from calibrating the QAT model's float graph, not from training."
             if quantization_aware else
             "Notice: --force_ptq: this model was not trained with QAT; INT8 export calibrates it anyway.")
    if flags.get("cal_json_file"):
        echo(f"Notice: --cal_json_file {flags['cal_json_file']} is not used: "
             + ("the QAT scales go into the ONNX's QDQ nodes and the TensorRT cache (--cal_cache_file)."
                if quantization_aware else "this model was not trained with QAT; INT8 scales come from calibration."))
    sample, sample_desc, calibration = _export_inputs(task, run, manifest, adapter)
    export.export_model(adapter, output, sample, sample_desc=sample_desc, data_type=flags["data_type"],
                        opset=flags.get("target_opset"), static_batch_size=flags.get("static_batch_size"),
                        calibration=calibration, cal_cache=flags.get("cal_cache_file"), cal_method=flags["cal_method"],
                        engine_file=flags.get("engine_file"), max_batch_size=flags["max_batch_size"],
                        min_batch_size=1 if flags.get("min_batch_size") is None else flags["min_batch_size"],
                        opt_batch_size=flags.get("opt_batch_size"),
                        max_workspace_size=flags.get("max_workspace_size"),
                        strict_type_constraints=bool(flags.get("strict_type_constraints")),
                        gen_ds_config=bool(flags.get("gen_ds_config")), force_ptq=bool(flags.get("force_ptq")))
    task.after_export(run, manifest, output)
    return 0


def _export_inputs(task: Task, run: Run, manifest: dict, adapter):
    """Real inputs to check the export on, and INT8 calibration batches, by the adapter's input name.

    As in TAO, an existing --cal_data_file stands in for the images unless --cal_image_dir is given;
    with --cal_image_dir (or the spec's data) the sampled inputs are written to --cal_data_file.
    """
    from taoctl.engine.calibration import read_calibration_file, write_calibration_file

    int8 = run.flags["data_type"] == "int8"
    # As in TAO, a static batch is also the calibration batch.
    static = run.flags.get("static_batch_size", -1)
    cal_batch = static if static > 0 else run.flags["batch_size"]
    count = run.flags["batches"] * cal_batch if int8 else CHECK_SAMPLES
    cal_file, folder = run.flags.get("cal_data_file"), run.flags.get("cal_image_dir")
    if _reads_cal_data_file(run.flags):
        raw = read_calibration_file(cal_file, tuple(manifest["input_shape"]))
        echo(f"Read {len(raw)} calibration images from {cal_file}")
    else:
        folder = folder or task.default_sample_folder(run)
        raw = task.sample_inputs(run, manifest, folder, count) if folder else None
        if raw is not None and int8 and cal_file:
            write_calibration_file(cal_file, raw)
    name = adapter.input_names[0]
    preprocess = task.preprocess(manifest)
    if raw is None:
        if int8:
            raise TaoctlError("INT8 calibration needs images: pass --cal_image_dir, --cal_data_file or -e with "
                              "dataset paths")
        echo("Warning: no images found (pass -e or --cal_image_dir) to check the export on; using random input")
        shape = tuple(manifest["input_shape"])
        return {name: np.random.default_rng(0).standard_normal((4, *shape), dtype=np.float32)}, "random input", None
    def named(batch):
        model_inputs = preprocess(batch)
        return model_inputs if isinstance(model_inputs, dict) else {name: model_inputs}

    raw = raw[:count]
    sample = named(raw[:CHECK_SAMPLES])
    calibration = None
    if int8:
        calibration = [named(raw[i:i + cal_batch]) for i in range(0, len(raw), cal_batch)]
    return sample, f"{len(raw[:CHECK_SAMPLES])} real {adapter.items}", calibration


def _reads_cal_data_file(flags: dict) -> bool:
    """Whether export reads --cal_data_file (it exists and no --cal_image_dir is given) rather than writes it."""
    cal_file = flags.get("cal_data_file")
    return bool(cal_file) and not flags.get("cal_image_dir") and os.path.exists(cal_file)


# --------------------------------------------------------------------------- calibration_tensorfile
def run_calibration_tensorfile(task: Task, run: Run) -> int:
    from taoctl.engine.calibration import write_calibration_file

    inputs = task.calibration_tensorfile(run)
    write_calibration_file(run.flags["output"], inputs)
    return 0


# --------------------------------------------------------------------------- the NeMo tasks' export and specs
def run_nemo_export(task: Task, run: Run) -> int:
    """TAO 3.x's conversational export: ``-m`` to the spec's ``export_to`` (in ``-r``) or ``-o``: ``.riva`` (the
    task's folder archive around the ONNX), ``.onnx`` or TAO's ``.eonnx`` (plain ONNX here); ``--data_type
    int8`` quantises the weights dynamically."""
    from taoctl.engine import export

    spec = run.spec
    output = run.flags.get("output_file")
    if not output:
        if run.results_dir is None:
            raise TaoctlError("export needs -o FILE or -r DIR (the spec's export_to is written there)")
        output = run.results_dir / (spec.export_to if spec is not None else "exported-model.riva")
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".riva", ".onnx", ".eonnx"):
        raise TaoctlError(f"{output}: export writes *.riva, *.onnx or *.eonnx")
    if spec is not None and spec.export_format == "ONNX" and suffix == ".riva":
        raise TaoctlError(f"export_format is ONNX but the output {output} is a .riva name: name it *.onnx or *.eonnx")
    model, manifest = task.load_model(run.flags["model_path"], run.key)
    adapter = task.export_adapter(run, model, manifest)
    sample = task.preprocess(manifest)(task.sample_texts(run, manifest, CHECK_SAMPLES))
    if suffix == ".eonnx":
        echo(f"Notice: {output} is written as plain, unencrypted ONNX (TAO's .eonnx was encrypted with -k)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with temporary_directory(output.parent) as work:
        written = Path(work) / "model.onnx"
        export.export_model(adapter, written, sample, sample_desc=f"{len(sample[adapter.input_names[0]])} "
                            f"{adapter.items}", data_type=run.flags["data_type"], quantization="dynamic",
                            announce=False)  # the temporary file: "Wrote" below names the output
        task.after_export(run, manifest, written)
        if suffix == ".riva":
            task.write_riva(manifest, written, output)
            echo(f"Wrote {output}: .riva is NVIDIA's own format; taoctl's is a zip of model.onnx, the tokenizer "
                 f"files and the label maps (Riva cannot load it)")
        else:
            os.replace(written, output)
            echo(f"Wrote {output}")
    return 0


def run_dataset_convert(task: Task, run: Run) -> int:
    """A spec-driven dataset_convert (the NeMo tasks': ``source_data_dir``, ``target_data_dir`` ... in the spec)."""
    task.dataset_convert(run)
    return 0


def run_download_specs(task: Task, run: Run) -> int:
    """The task's default spec files (TAO's keys, taoctl's own files) into ``-o``."""
    from taoctl.fileio import write_atomic

    folder = Path(run.flags["output_dir"])
    specs = task.default_specs()
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in specs.items():
        write_atomic(folder / name, text)
    echo(f"Wrote {', '.join(sorted(specs))} to {folder}")
    return 0


_RUNNERS = {"train": run_train, "evaluate": run_evaluate, "inference": run_inference, "prune": run_prune,
            "export": run_export, "calibration_tensorfile": run_calibration_tensorfile,
            "nemo_train": run_train, "nemo_finetune": run_train, "nemo_evaluate": run_evaluate,
            "nemo_infer": run_inference, "nemo_export": run_nemo_export, "nemo_dataset_convert": run_dataset_convert,
            "download_specs": run_download_specs}
