"""A small training loop whose checkpointing, logging, evaluation and status are hooks.

Tasks give the loop a model, an optimizer, a loader and ``loss_fn(model, batch) -> (loss,
{metric: float})``; the loop does the epochs, AMP, DDP wrapping, per-iteration scheduler steps,
gradient clipping, an EMA of the weights and resuming. Everything written to the results dir
goes through hooks, by default (in this order):

* ``CheckpointHook``: ``weights/<model_name>_<epoch:03d>.tlt`` (TAO's naming) every
  ``checkpoint_interval`` epochs and at the end, plus the optimizer/scheduler/RNG state beside
  it in ``train_state/`` so that re-running the same command resumes from the newest one;
* ``StatusHook``: ``status.json`` lines as TAO writes them (STARTED/RUNNING/SUCCESS/FAILURE);
* ``TrainingCSVHook``: ``training.csv`` as TAO's Keras CSVLogger writes it (its column names);
* ``MetricsCSVHook``: ``metrics.csv``, one row per epoch with taoctl's names and epoch times;
* ``TensorBoardHook``: scalars under ``events/``, where TAO's networks put their TensorBoard logs;
* ``ProgressHook``: a bar with ETA on a terminal, plain periodic lines in logs.
A task adds ``EvalHook(evaluate, period, first_epoch, best_metric)`` for validation (it runs
before the hooks above, so its ``val_*`` values reach them) and may replace any default hook by
giving one with the same ``name``. Only the main process (rank 0) runs hooks that write.

``init_epoch`` (``--init_epoch N``) continues from the end of epoch N-1: from its train state
when ``train_state/`` holds it (weights, optimizer moments, scheduler, RNG: the same run as one
never stopped), else from its weights (or, without those, from the model given, as TAO's recipe
of pointing the spec's pretrained model at the checkpoint does) with the learning-rate schedule
moved to epoch N and a one-line warning that the optimizer starts afresh. Without it, a results
dir holding checkpoints resumes from the newest.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from taoctl.engine import distributed, modelfile
from taoctl.engine.device import amp_enabled, to_device
from taoctl.engine.model_parallel import spans_devices
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


# --------------------------------------------------------------------------- hooks
class Hook:
    """One part of the training run; override the points you need.

    Points, in the order the trainer calls them: ``before_train``; per epoch ``before_epoch``,
    per step ``before_step`` and ``after_step``, then ``after_epoch``; ``after_train``.
    ``main_only`` hooks run on the main process (rank 0) only. A hook whose ``name`` is a
    default hook's name (``Trainer.default_hooks``) takes that hook's place; subclasses of a
    default hook inherit its name, so ``hooks=[MyStatusHook(...)]`` replaces ``StatusHook``.
    Hooks with ``fills_logs`` (evaluation) run before all others at each point, so the values
    they add to an epoch's logs reach the hooks that write them (status.json, metrics.csv,
    TensorBoard, progress line, checkpoint manifest).
    """

    name: str | None = None
    main_only = True
    fills_logs = False

    def before_train(self, trainer: "Trainer") -> None: ...

    def before_epoch(self, trainer: "Trainer", epoch: int) -> None: ...

    def before_step(self, trainer: "Trainer", step: int, steps: int) -> None: ...

    def after_step(self, trainer: "Trainer", step: int, steps: int, logs: dict) -> None: ...

    def after_epoch(self, trainer: "Trainer", epoch: int, logs: dict) -> None: ...

    def after_train(self, trainer: "Trainer", status: str, message: str) -> None: ...


class EvalHook(Hook):
    """Validation every ``period`` epochs from ``first_epoch`` on, and at the last epoch.

    TAO's ``validation_period_during_training`` / ``first_validation_epoch``: validation runs at
    epochs ``first_epoch + i * period`` and at ``max_epochs``. ``evaluate(model) -> {metric:
    value}`` runs on the main process, under ``no_grad`` and in eval mode, on the weights the
    checkpoints hold (the EMA when the trainer keeps one); its values enter the epoch's logs as
    ``val_<metric>``; epochs without validation have no ``val_*`` values. With ``best_metric``
    (``"mAP"`` or ``"val_mAP"``) the model of the best epoch so far (``mode`` ``"max"`` or
    ``"min"``; the earliest on ties) is kept as ``weights/<model_name>_best.tlt`` and described
    by ``trainer.best``, which status.json records; a resumed run finds the best so far in the
    restored history.
    """

    name = "evaluation"
    fills_logs = True

    def __init__(self, evaluate: Callable[[nn.Module], dict], period: int = 1, first_epoch: int = 1,
                 best_metric: str | None = None, mode: str = "max"):
        if int(period) < 1 or int(first_epoch) < 1:
            raise TaoctlError(f"validation period and first validation epoch must be at least 1, "
                              f"got {period} and {first_epoch}")
        if mode not in ("max", "min"):
            raise TaoctlError(f"the best checkpoint's mode must be 'max' or 'min', got {mode!r}")
        self.evaluate = evaluate
        self.period, self.first_epoch = int(period), int(first_epoch)
        self.best_metric = _val_name(best_metric) if best_metric else None
        self.mode = mode

    def is_validation_epoch(self, epoch: int, max_epochs: int) -> bool:
        scheduled = epoch >= self.first_epoch and (epoch - self.first_epoch) % self.period == 0
        return scheduled or epoch == max_epochs

    def _improves(self, value: float, best: dict | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best["value"] if self.mode == "max" else value < best["value"]

    def before_train(self, trainer):
        if self.best_metric is None:
            return
        trainer.best = None
        for row in trainer.history:
            if self.best_metric in row and self._improves(row[self.best_metric], trainer.best):
                trainer.best = {"metric": self.best_metric, "epoch": row["epoch"], "value": row[self.best_metric]}

    def after_epoch(self, trainer, epoch, logs):
        if not self.is_validation_epoch(epoch, trainer.max_epochs):
            return
        model = trainer.eval_model
        model.eval()
        with torch.no_grad():
            results = self.evaluate(model)
        logs.update({_val_name(k): float(v) for k, v in results.items()})
        if self.best_metric is None:
            return
        if self.best_metric not in logs:
            raise TaoctlError(f"evaluation gave no {self.best_metric} to choose the best checkpoint by "
                              f"(it gave {', '.join(_val_name(k) for k in results) or 'nothing'})")
        if self._improves(logs[self.best_metric], trainer.best):
            trainer.best = {"metric": self.best_metric, "epoch": epoch, "value": logs[self.best_metric]}
            trainer.save_weights(trainer.best_weights_path, epoch, best=trainer.best)


def _val_name(metric: str) -> str:
    return metric if metric.startswith("val") else f"val_{metric}"


class EarlyStoppingHook(Hook):
    """Feeds each validation's cost to a schedule that anneals and stops on it (DetectNet_v2's
    ``early_stopping_annealing_schedule``: ``optim.EarlyStoppingAnnealingSchedule``, the one the
    trainer's scheduler follows) and ends training when the schedule says so.

    It fills logs so that it runs right after ``EvalHook`` (give it after that hook) and before the
    checkpoint is written, which then holds the schedule's new state. Every process runs it with the
    main process's cost, so that under DDP all of them anneal at the same step and stop together.
    """

    name = "early_stopping"
    main_only = False
    fills_logs = True

    def __init__(self, schedule, metric: str = "val_cost"):
        self.schedule = schedule
        self.metric = _val_name(metric)

    def after_epoch(self, trainer, epoch, logs):
        validated = any(name.startswith("val_") for name in logs)
        if validated and self.metric not in logs:
            raise TaoctlError(f"validation gave no {self.metric} for early_stopping_annealing_schedule "
                              f"(it gave {', '.join(k for k in logs if k.startswith('val_'))})")
        cost = _main_process_value(logs.get(self.metric, math.nan), trainer.device)
        if math.isnan(cost):
            return  # no validation this epoch
        if not self.schedule.observe_validation(epoch, cost, trainer.global_step):
            trainer.stop_training = True
            if trainer.dist.is_main:
                print(f"Early stopping at epoch {epoch}: the validation cost has not improved for "
                      f"{self.schedule.patience_epochs} epochs since annealing ended (best "
                      f"{self.schedule.best_cost:.6g} at epoch {self.schedule.best_epoch})", flush=True)


def _main_process_value(value: float, device: torch.device) -> float:
    """The main process's ``value`` on every process (itself without DDP)."""
    if not distributed.current().enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.broadcast(tensor, src=0)
    return float(tensor.item())


class CheckpointHook(Hook):
    name = "checkpoint"
    keep_states = 2

    def after_epoch(self, trainer, epoch, logs):
        if epoch % trainer.checkpoint_interval and epoch != trainer.max_epochs and not trainer.stop_training:
            return
        trainer.save_checkpoint(epoch)
        states = sorted(trainer.state_dir.glob(f"{trainer.model_name}_*.state"))
        for old in states[:-self.keep_states]:
            old.unlink(missing_ok=True)


class StatusHook(Hook):
    """``status.json``: one JSON object per line, the fields TAO's status logger writes.

    With a best checkpoint (``EvalHook(best_metric=...)``) RUNNING and final lines also carry
    ``best``: ``{"metric": "val_mAP", "epoch": 7, "value": 0.81}``.
    """

    name = "status"

    def __init__(self, path: Path):
        self.path = path

    def write(self, status: str, message: str, **fields) -> None:
        now = datetime.datetime.now()
        record = {"date": now.strftime("%-m/%-d/%Y"), "time": now.strftime("%H:%M:%S"), "status": status,
                  "verbosity": "INFO", "message": message, **fields}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _best(self, trainer) -> dict:
        return {"best": trainer.best} if trainer.best is not None else {}

    def before_train(self, trainer):
        self.write("STARTED", "Starting Training Loop.", epoch=trainer.start_epoch - 1, max_epoch=trainer.max_epochs)

    def after_epoch(self, trainer, epoch, logs):
        metrics = {k: v for k, v in logs.items() if k not in ("loss", "time_per_epoch", "epoch")}
        self.write("RUNNING", "Training loop in progress", epoch=epoch, max_epoch=trainer.max_epochs,
                   time_per_epoch=_format_seconds(logs["time_per_epoch"]), eta=_format_seconds(trainer.eta_s),
                   loss=logs["loss"], metrics=metrics, graphical={"loss": logs["loss"], **metrics},
                   **self._best(trainer))

    def after_train(self, trainer, status, message):
        self.write(status, message, epoch=trainer.last_epoch, max_epoch=trainer.max_epochs, **self._best(trainer))


class TrainingCSVHook(Hook):
    """``training.csv`` as TAO's Keras CSVLogger writes it (classification_tf1's OneIndexedCSVLogger):
    ``epoch`` (from 1), then the epoch's logs in sorted order under Keras 2.2.4's names, which TAO's
    TF1 networks run on: ``acc,loss,lr,val_acc,val_loss`` for a classifier (Keras 2.2.4 logs the
    ``accuracy`` metric as ``acc``). Scripts written for TAO read these names; an epoch without
    validation leaves its ``val_*`` cells empty.
    """

    name = "training_csv"
    keras_names = {"accuracy": "acc", "val_accuracy": "val_acc"}
    not_logged = ("epoch", "time_per_epoch")  # epoch is the first column; Keras logs no epoch time

    def __init__(self, path: Path):
        self.path = path

    def after_epoch(self, trainer, epoch, logs):
        rows = [{self.keras_names.get(k, k): v for k, v in row.items() if k not in self.not_logged}
                for row in trainer.history]
        columns = sorted({k for row in rows for k in row})
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["epoch"] + columns)
        for source, row in zip(trainer.history, rows):
            writer.writerow([source["epoch"]] + [row.get(c, "") for c in columns])
        write_atomic(self.path, buffer.getvalue())


class MetricsCSVHook(Hook):
    """``metrics.csv``: one row per epoch; a value an epoch did not compute is an empty cell."""

    name = "metrics_csv"

    def __init__(self, path: Path):
        self.path = path

    def after_epoch(self, trainer, epoch, logs):
        columns = sorted({k for row in trainer.history for k in row} - {"epoch"})
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["epoch"] + columns)
        for row in trainer.history:
            writer.writerow([row["epoch"]] + [row.get(c, "") for c in columns])
        write_atomic(self.path, buffer.getvalue())


class TensorBoardHook(Hook):
    name = "tensorboard"

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.writer = None

    def before_train(self, trainer):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=trainer.start_epoch)

    def after_epoch(self, trainer, epoch, logs):
        for name, value in logs.items():
            if isinstance(value, (int, float)) and name != "epoch":
                self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def after_train(self, trainer, status, message):
        if self.writer is not None:
            self.writer.close()


class ProgressHook(Hook):
    """A tqdm bar with ETA on a terminal; otherwise a plain line every ``interval_s`` seconds."""

    name = "progress"

    def __init__(self, interval_s: float = 30.0, stream=None):
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self.bar = None
        self.last_line = 0.0
        self.epoch_start = 0.0

    @property
    def interactive(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def after_step(self, trainer, step, steps, logs):
        now = time.monotonic()
        if step == 1:
            self.epoch_start = self.last_line = now
            if self.interactive:
                from tqdm import tqdm

                self.bar = tqdm(total=steps, desc=f"Epoch {trainer.epoch}/{trainer.max_epochs}", file=self.stream,
                                leave=False, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if step == steps:
                self.bar.close()
                self.bar = None
        elif now - self.last_line >= self.interval_s or step == steps:
            self.last_line = now
            elapsed = now - self.epoch_start
            eta = elapsed / step * (steps - step)
            print(f"Epoch {trainer.epoch}/{trainer.max_epochs} step {step}/{steps} loss {logs['loss']:.4f} "
                  f"elapsed {_format_seconds(elapsed)} eta {_format_seconds(eta)}", file=self.stream, flush=True)

    def after_epoch(self, trainer, epoch, logs):
        shown = " ".join(f"{k} {v:.4f}" for k, v in logs.items()
                         if isinstance(v, float) and k not in ("time_per_epoch", "lr"))
        print(f"Epoch {epoch}/{trainer.max_epochs}: {shown} lr {logs.get('lr', 0):.3g} "
              f"time {_format_seconds(logs['time_per_epoch'])} eta {_format_seconds(trainer.eta_s)}", flush=True)


# --------------------------------------------------------------------------- trainer
class Trainer:
    """The loop. ``clip_grad_norm`` clips the gradients' total norm before each optimizer step
    (unscaled first under AMP); ``ema_decay`` keeps an exponential moving average of the weights
    (``torch.optim.swa_utils.AveragedModel``, parameters and buffers, updated after every step)
    that evaluation, the saved ``.tlt`` files and ``train()``'s result use, while training goes on
    with the raw weights; ``train_state/`` keeps both so a resumed run continues each.
    ``hooks`` are added to ``default_hooks`` or, by name, replace them (see ``Hook``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_loader, loss_fn: Callable,
                 results_dir, max_epochs: int, model_name: str, manifest: dict, key: str | None = None,
                 scheduler=None, checkpoint_interval: int = 1, device: torch.device | None = None,
                 amp: bool = False, seed: int = 0, init_epoch: int = 1, hooks=(),
                 resume: bool = True, progress_interval_s: float = 30.0, clip_grad_norm: float | None = None,
                 ema_decay: float | None = None):
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise TaoctlError(f"the gradient clipping norm must be positive, got {clip_grad_norm}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise TaoctlError(f"the EMA decay must be between 0 and 1, got {ema_decay}")
        self.model = model
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.loss_fn = loss_fn
        self.results_dir = Path(results_dir)
        self.max_epochs = max_epochs
        self.model_name = model_name
        self.manifest = manifest
        self.key = key
        self.scheduler = scheduler
        self.checkpoint_interval = max(int(checkpoint_interval or 1), 1)
        self.device = device or torch.device("cpu")
        self.amp = amp_enabled(self.device, amp)
        self.seed = seed
        self.init_epoch = max(int(init_epoch or 1), 1)
        self.start_epoch = self.init_epoch
        self.resume = resume
        self.clip_grad_norm = clip_grad_norm
        self.ema_decay = ema_decay
        self.ema: AveragedModel | None = None  # built by train() once the model sits on its device
        self.dist = distributed.current()
        # One dict per finished epoch; the last one is the running epoch's logs while its hooks run.
        self.history: list[dict] = []
        self.best: dict | None = None  # set by EvalHook(best_metric=...) on the main process
        self.epoch = self.last_epoch = self.start_epoch - 1
        self.eta_s = 0.0
        self.global_step = 0
        self.stop_training = False  # set by a hook (early stopping) to end training after this epoch
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.hooks = _arrange_hooks(self.default_hooks(progress_interval_s), list(hooks))

    def default_hooks(self, progress_interval_s: float) -> list[Hook]:
        return [CheckpointHook(), StatusHook(self.results_dir / "status.json"),
                TrainingCSVHook(self.results_dir / "training.csv"), MetricsCSVHook(self.results_dir / "metrics.csv"),
                TensorBoardHook(self.results_dir / "events"), ProgressHook(progress_interval_s)]

    # ------------------------------------------------------------------ paths
    @property
    def weights_dir(self) -> Path:
        return self.results_dir / "weights"

    @property
    def state_dir(self) -> Path:
        return self.results_dir / "train_state"

    def weights_path(self, epoch: int) -> Path:
        # TAO 5's form (`taoctl model ...`) names checkpoints .hdf5 as TAO 5 does; TAO 4's .tlt.
        return self.weights_dir / f"{self.model_name}_{epoch:03d}{modelfile.checkpoint_suffix()}"

    @property
    def best_weights_path(self) -> Path:
        return self.weights_dir / f"{self.model_name}_best{modelfile.checkpoint_suffix()}"

    def state_path(self, epoch: int) -> Path:
        return self.state_dir / f"{self.model_name}_{epoch:03d}.state"

    @property
    def bare_model(self) -> nn.Module:
        """The model being trained, without its DDP wrapper."""
        return self.model.module if hasattr(self.model, "module") else self.model

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when kept, else the trained model."""
        return self.ema.module if self.ema is not None else self.bare_model

    # ------------------------------------------------------------------ checkpoints
    def save_weights(self, path: Path, epoch: int, **manifest_fields) -> None:
        manifest = {**self.manifest, "epoch": epoch, "metrics": self.history[-1] if self.history else {},
                    **manifest_fields}
        modelfile.save_model(path, self.eval_model, manifest, key=self.key)

    def save_checkpoint(self, epoch: int) -> None:
        """The train state, then the weights: a run killed between the two resumes from the previous
        epoch, and an epoch's weights file never exists without the state a rerun resumes from."""
        state = {"epoch": epoch, "global_step": self.global_step, "history": self.history,
                 "stopped_early": self.stop_training,
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "numpy_rng": list(np.random.get_state()), "python_rng": random.getstate()}
        if self.ema is not None:
            # The .tlt holds the EMA; training resumes from the raw weights.
            state["model"] = self.bare_model.state_dict()
            state["ema"] = self.ema.state_dict()
        modelfile.save_state(self.state_path(epoch), state, key=self.key)
        self.save_weights(self.weights_path(epoch), epoch)

    def saved_states(self) -> list[int]:
        """The epochs ``train_state/`` holds a state of, oldest first."""
        pattern = re.compile(rf"^{re.escape(self.model_name)}_(\d+)\.state$")
        matches = (pattern.match(path.name) for path in self.state_dir.glob("*.state"))
        return sorted(int(match.group(1)) for match in matches if match)

    def newest_checkpoint(self) -> int | None:
        epochs = [epoch for epoch in self.saved_states() if self.weights_path(epoch).exists()]
        return max(epochs) if epochs else None

    def _restore(self, epoch: int) -> None:
        state = modelfile.load_state(self.state_path(epoch), self.key)
        if self.ema is not None:
            if "ema" not in state:
                raise TaoctlError(f"{self.state_path(epoch)} was saved without an EMA of the weights; "
                                  f"resume with the spec it was trained with")
            self.bare_model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        else:
            modelfile.load_weights_into(self.bare_model, modelfile.load_model(self.weights_path(epoch), self.key))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(tuple(state["numpy_rng"]))
        random.setstate(state["python_rng"])
        self.history = [dict(row) for row in state["history"]]
        self.global_step = state["global_step"]
        # A run that stopped early is finished: rerunning its command trains no further epoch.
        self.stop_training = bool(state.get("stopped_early", False))
        self.start_epoch = epoch + 1
        self.last_epoch = epoch

    # ------------------------------------------------------------------ loop
    def _call(self, name: str, *args) -> None:
        for hook in self.hooks:
            if self.dist.is_main or not hook.main_only:
                getattr(hook, name)(self, *args)

    def _set_epoch_shuffle(self, epoch: int) -> None:
        # Shuffling depends only on (seed, epoch), so a resumed run sees the same order.
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(self.seed * 1000 + epoch)

    def _continue_from(self, previous: int) -> None:
        """``--init_epoch previous + 1``: the run continues from the end of epoch ``previous``."""
        states_after = [epoch for epoch in self.saved_states() if epoch > previous]
        if previous in self.saved_states() and self.weights_path(previous).exists():
            self._restore(previous)
            self._announce(f"Resuming from epoch {previous} checkpoint {self.weights_path(previous)} "
                           f"(--init_epoch {self.init_epoch})")
        else:
            weights = self.weights_path(previous)
            if weights.exists():
                modelfile.load_weights_into(self.bare_model, modelfile.load_model(weights, self.key))
                source = (f"no train state of epoch {previous} in {self.state_dir} (the newest "
                          f"{CheckpointHook.keep_states} are kept); continuing from {weights}")
            else:
                source = (f"no checkpoint of epoch {previous} in {self.weights_dir}; training from the model the "
                          f"spec builds (point its pretrained model at the epoch {previous} checkpoint, as TAO's "
                          f"recipe does)")
            self._schedule_from_epoch(previous)
            self._announce(f"Warning: --init_epoch {self.init_epoch}: {source} with fresh optimizer moments and the "
                           f"learning-rate schedule at epoch {self.init_epoch}")
        # Later states belong to the run this one replaces: the next plain rerun resumes this one.
        if self.dist.is_main:
            for epoch in states_after:
                self.state_path(epoch).unlink(missing_ok=True)

    def _schedule_from_epoch(self, previous: int) -> None:
        """Step counter and scheduler as at the end of epoch ``previous`` (the scheduler's rate
        being a function of its step count, as ``optim.build_scheduler``'s is)."""
        self.global_step = previous * len(self.train_loader)
        self.last_epoch = previous
        if self.scheduler is not None:
            self.scheduler.last_epoch = self.global_step - 1
            with warnings.catch_warnings():
                # The scheduler's step before any optimizer step is deliberate here.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                self.scheduler.step()

    def _announce(self, line: str) -> None:
        if self.dist.is_main:
            print(line, flush=True)

    def train(self) -> nn.Module:
        """Train (from ``init_epoch``, or resuming from the newest checkpoint in ``train_state/``) and
        return ``eval_model``."""
        split = spans_devices(self.model)  # model parallel: its layers stay where they were placed
        if not split:
            self.model.to(self.device)
        if self.ema_decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay), use_buffers=True)
        if self.resume and self.init_epoch > 1:
            self._continue_from(self.init_epoch - 1)
        elif self.resume:
            newest = self.newest_checkpoint()
            if newest is not None:
                self._restore(newest)
                self._announce(f"Resuming from epoch {newest} checkpoint {self.weights_path(newest)}")
        if self.dist.enabled:
            # DDP wants no device_ids for a module on several devices (and for CPU).
            device_ids = [self.device.index] if self.device.type == "cuda" and not split else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self._call("before_train")
        try:
            self._loop()
        except KeyboardInterrupt:
            self._call("after_train", "FAILURE", "Training interrupted.")
            raise
        except BaseException as exc:
            self._call("after_train", "FAILURE", f"Training failed: {exc}")
            raise
        self._call("after_train", "SUCCESS", "Training finished successfully.")
        return self.eval_model

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the loss-scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.bare_model)
        self.global_step += 1

    def _loop(self) -> None:
        steps = len(self.train_loader)
        if steps == 0:
            raise TaoctlError("the training set is empty (no batches): check the dataset path and batch size")
        epoch_times: list[float] = []
        for epoch in range(self.start_epoch, self.max_epochs + 1):
            if self.stop_training:
                break
            self.epoch = epoch
            self._set_epoch_shuffle(epoch)
            self.model.train()
            self._call("before_epoch", epoch)
            started = time.monotonic()
            loss_sum, count, metric_sums = 0.0, 0, {}
            for step, batch in enumerate(self.train_loader, start=1):
                self._call("before_step", step, steps)
                batch = to_device(batch, self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    loss, metrics = self.loss_fn(self.model, batch)
                if not torch.isfinite(loss):
                    raise TaoctlError(f"loss became {loss.item()} at epoch {epoch} step {step}: "
                                      f"lower the learning rate or check the data")
                self._optimizer_step(loss)
                loss_sum += loss.item()
                count += 1
                for name, value in (metrics or {}).items():
                    metric_sums[name] = metric_sums.get(name, 0.0) + float(value)
                self._call("after_step", step, steps, {"loss": loss_sum / count})
            epoch_times.append(time.monotonic() - started)
            logs = {"epoch": epoch, "loss": distributed.all_reduce_mean(loss_sum / count, self.device),
                    "lr": self.optimizer.param_groups[0]["lr"]}
            logs.update({k: distributed.all_reduce_mean(v / count, self.device) for k, v in metric_sums.items()})
            logs["time_per_epoch"] = epoch_times[-1]
            self.eta_s = float(np.mean(epoch_times[-3:])) * (self.max_epochs - epoch)
            # The same dict: what fills_logs hooks add (val_*) is in the history the writers read.
            self.history.append(logs)
            self.last_epoch = epoch
            self._call("after_epoch", epoch, logs)
            distributed.barrier()


def _arrange_hooks(defaults: list[Hook], given: list[Hook]) -> list[Hook]:
    """Defaults with same-named given hooks in their place, then the other given hooks; hooks
    that fill logs first (stable, so the order is otherwise the one given)."""
    names = [hook.name for hook in given if hook.name is not None]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"several hooks named {', '.join(duplicates)}: give each hook a distinct name")
    replacements = {hook.name: hook for hook in given if hook.name is not None}
    default_names = {hook.name for hook in defaults}
    arranged = [replacements.get(hook.name, hook) for hook in defaults]
    arranged += [hook for hook in given if hook.name not in default_names]
    return sorted(arranged, key=lambda hook: not hook.fills_logs)
