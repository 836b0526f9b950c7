"""A small training loop whose checkpointing, logging, evaluation and status are hooks.

Tasks give the loop a model, an optimizer, a loader and ``loss_fn(model, batch) -> (loss,
{metric: float})``; the loop does the epochs, AMP, DDP wrapping, per-iteration scheduler steps
and resuming. Everything written to the results dir goes through hooks:

* ``CheckpointHook``: ``weights/<model_name>_<epoch:03d>.tlt`` (TAO's naming) every
  ``checkpoint_interval`` epochs and at the end, plus the optimizer/scheduler/RNG state beside
  it in ``train_state/`` so that re-running the same command resumes from the newest one;
* ``StatusHook``: ``status.json`` lines as TAO writes them (STARTED/RUNNING/SUCCESS/FAILURE);
* ``MetricsCSVHook``: ``metrics.csv``, one row per epoch;
* ``TensorBoardHook``: scalars under ``tensorboard/``;
* ``ProgressHook``: a bar with ETA on a terminal, plain periodic lines in logs.
Only the main process (rank 0) runs hooks that write.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from taoctl.engine import distributed, modelfile
from taoctl.engine.device import amp_enabled, to_device
from taoctl.engine.model_parallel import spans_devices
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic

RUN_FILE = ".taoctl_run.json"


# --------------------------------------------------------------------------- results dir
def prepare_results_dir(results_dir, spec_text: str, force: bool = False, task: str = "") -> Path:
    """Create the results dir, check it is writable and belongs to this spec.

    A results dir that already holds a run of a different spec is refused unless ``force``,
    which clears that run's checkpoints so the new run starts from scratch.
    """
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TaoctlError(f"results dir {results_dir} is not writable: {exc.strerror or exc}") from None
    digest = hashlib.sha256(spec_text.encode()).hexdigest()
    run_file = results_dir / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text() or "{}")
        if previous.get("spec_sha256") != digest:
            if not force:
                raise TaoctlError(f"results dir {results_dir} holds a run of a different spec; "
                                  f"use another -r, or --force to start over there")
            for stale in ("weights", "train_state"):
                shutil.rmtree(results_dir / stale, ignore_errors=True)
            (results_dir / "status.json").unlink(missing_ok=True)
    write_atomic(run_file, json.dumps({"spec_sha256": digest, "task": task}))
    return results_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


# --------------------------------------------------------------------------- hooks
class Hook:
    """Override what you need; the trainer calls these on the main process only when ``main_only``."""

    main_only = True

    def before_train(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer", step: int, steps: int, logs: dict) -> None: ...

    def after_epoch(self, trainer: "Trainer", epoch: int, logs: dict) -> None: ...

    def after_train(self, trainer: "Trainer", status: str, message: str) -> None: ...


class CheckpointHook(Hook):
    keep_states = 2

    def after_epoch(self, trainer, epoch, logs):
        if epoch % trainer.checkpoint_interval and epoch != trainer.max_epochs:
            return
        trainer.save_checkpoint(epoch)
        states = sorted(trainer.state_dir.glob(f"{trainer.model_name}_*.state"))
        for old in states[:-self.keep_states]:
            old.unlink(missing_ok=True)


class StatusHook(Hook):
    """``status.json``: one JSON object per line, the fields TAO's status logger writes."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, status: str, message: str, **fields) -> None:
        now = datetime.datetime.now()
        record = {"date": now.strftime("%-m/%-d/%Y"), "time": now.strftime("%H:%M:%S"), "status": status,
                  "verbosity": "INFO", "message": message, **fields}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def before_train(self, trainer):
        self.write("STARTED", "Starting Training Loop.", epoch=trainer.start_epoch - 1, max_epoch=trainer.max_epochs)

    def after_epoch(self, trainer, epoch, logs):
        metrics = {k: v for k, v in logs.items() if k not in ("loss", "time_per_epoch", "eta", "epoch")}
        self.write("RUNNING", "Training loop in progress", epoch=epoch, max_epoch=trainer.max_epochs,
                   time_per_epoch=_format_seconds(logs["time_per_epoch"]), eta=_format_seconds(logs["eta"]),
                   loss=logs["loss"], metrics=metrics, graphical={"loss": logs["loss"], **metrics})

    def after_train(self, trainer, status, message):
        self.write(status, message, epoch=trainer.last_epoch, max_epoch=trainer.max_epochs)


class MetricsCSVHook(Hook):
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
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.writer = None

    def before_train(self, trainer):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=trainer.start_epoch)

    def after_epoch(self, trainer, epoch, logs):
        for name, value in logs.items():
            if isinstance(value, (int, float)) and name not in ("epoch", "eta"):
                self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def after_train(self, trainer, status, message):
        if self.writer is not None:
            self.writer.close()


class ProgressHook(Hook):
    """A tqdm bar with ETA on a terminal; otherwise a plain line every ``interval_s`` seconds."""

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
                         if isinstance(v, float) and k not in ("time_per_epoch", "eta", "lr"))
        print(f"Epoch {epoch}/{trainer.max_epochs}: {shown} lr {logs.get('lr', 0):.3g} "
              f"time {_format_seconds(logs['time_per_epoch'])} eta {_format_seconds(logs['eta'])}", flush=True)


@contextlib.contextmanager
def tee_output(log_file: str | os.PathLike | None):
    """Copy stdout and stderr into ``log_file`` (``--log_file``) while the block runs."""
    if not log_file:
        yield
        return

    class Tee(io.TextIOBase):
        def __init__(self, stream, handle):
            self.stream, self.handle = stream, handle

        def write(self, text):
            self.handle.write(text)
            return self.stream.write(text)

        def flush(self):
            self.handle.flush()
            self.stream.flush()

        def isatty(self):
            return self.stream.isatty()

    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as handle:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, handle), Tee(sys.stderr, handle)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


# --------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_loader, loss_fn: Callable,
                 results_dir, max_epochs: int, model_name: str, manifest: dict, key: str | None = None,
                 scheduler=None, evaluate: Callable[[nn.Module], dict] | None = None, checkpoint_interval: int = 1,
                 device: torch.device | None = None, amp: bool = False, seed: int = 0,
                 log_file: str | None = None, init_epoch: int = 1, hooks=(), resume: bool = True,
                 progress_interval_s: float = 30.0):
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
        self.evaluate = evaluate
        self.checkpoint_interval = max(int(checkpoint_interval or 1), 1)
        self.device = device or torch.device("cpu")
        self.amp = amp_enabled(self.device, amp)
        self.seed = seed
        self.log_file = log_file
        self.start_epoch = max(int(init_epoch or 1), 1)
        self.resume = resume
        self.dist = distributed.current()
        self.history: list[dict] = []
        self.epoch = self.last_epoch = self.start_epoch - 1
        self.global_step = 0
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        default_hooks = [CheckpointHook(), StatusHook(self.results_dir / "status.json"),
                         MetricsCSVHook(self.results_dir / "metrics.csv"),
                         TensorBoardHook(self.results_dir / "tensorboard"), ProgressHook(progress_interval_s)]
        self.hooks = default_hooks + list(hooks)

    # ------------------------------------------------------------------ paths
    @property
    def weights_dir(self) -> Path:
        return self.results_dir / "weights"

    @property
    def state_dir(self) -> Path:
        return self.results_dir / "train_state"

    def weights_path(self, epoch: int) -> Path:
        return self.weights_dir / f"{self.model_name}_{epoch:03d}.tlt"

    def state_path(self, epoch: int) -> Path:
        return self.state_dir / f"{self.model_name}_{epoch:03d}.state"

    @property
    def bare_model(self) -> nn.Module:
        return self.model.module if hasattr(self.model, "module") else self.model

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, epoch: int) -> None:
        manifest = {**self.manifest, "epoch": epoch, "metrics": self.history[-1] if self.history else {}}
        modelfile.save_model(self.weights_path(epoch), self.bare_model, manifest, key=self.key)
        state = {"epoch": epoch, "global_step": self.global_step, "history": self.history,
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "numpy_rng": list(np.random.get_state()), "python_rng": random.getstate()}
        modelfile.save_state(self.state_path(epoch), state, key=self.key)

    def newest_checkpoint(self) -> int | None:
        pattern = re.compile(rf"^{re.escape(self.model_name)}_(\d+)\.state$")
        epochs = []
        for path in self.state_dir.glob("*.state"):
            match = pattern.match(path.name)
            if match and self.weights_path(int(match.group(1))).exists():
                epochs.append(int(match.group(1)))
        return max(epochs) if epochs else None

    def _restore(self, epoch: int) -> None:
        weights = modelfile.load_model(self.weights_path(epoch), self.key)
        modelfile.load_weights_into(self.bare_model, weights)
        state = modelfile.load_state(self.state_path(epoch), self.key)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(tuple(state["numpy_rng"]))
        random.setstate(state["python_rng"])
        self.history = [dict(row) for row in state["history"]]
        self.global_step = state["global_step"]
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

    def train(self) -> nn.Module:
        split = spans_devices(self.model)  # model parallel: its layers stay where they were placed
        if not split:
            self.model.to(self.device)
        if self.resume:
            newest = self.newest_checkpoint()
            if newest is not None:
                self._restore(newest)
                if self.dist.is_main:
                    print(f"Resuming from epoch {newest} checkpoint {self.weights_path(newest)}", flush=True)
        if self.dist.enabled:
            # DDP wants no device_ids for a module on several devices (and for CPU).
            device_ids = [self.device.index] if self.device.type == "cuda" and not split else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        with tee_output(self.log_file if self.dist.is_main else None):
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
        return self.bare_model

    def _loop(self) -> None:
        steps = len(self.train_loader)
        if steps == 0:
            raise TaoctlError("the training set is empty (no batches): check the dataset path and batch size")
        epoch_times: list[float] = []
        for epoch in range(self.start_epoch, self.max_epochs + 1):
            self.epoch = epoch
            self._set_epoch_shuffle(epoch)
            self.model.train()
            started = time.monotonic()
            loss_sum, count, metric_sums = 0.0, 0, {}
            for step, batch in enumerate(self.train_loader, start=1):
                batch = to_device(batch, self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    loss, metrics = self.loss_fn(self.model, batch)
                if not torch.isfinite(loss):
                    raise TaoctlError(f"loss became {loss.item()} at epoch {epoch} step {step}: "
                                      f"lower the learning rate or check the data")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.global_step += 1
                loss_sum += loss.item()
                count += 1
                for name, value in (metrics or {}).items():
                    metric_sums[name] = metric_sums.get(name, 0.0) + float(value)
                self._call("after_step", step, steps, {"loss": loss_sum / count})
            epoch_times.append(time.monotonic() - started)
            logs = {"epoch": epoch, "loss": distributed.all_reduce_mean(loss_sum / count, self.device),
                    "lr": self.optimizer.param_groups[0]["lr"]}
            logs.update({k: distributed.all_reduce_mean(v / count, self.device) for k, v in metric_sums.items()})
            if self.evaluate is not None:
                if self.dist.is_main:
                    self.bare_model.eval()
                    with torch.no_grad():
                        logs.update({f"val_{k}" if not k.startswith("val") else k: float(v)
                                     for k, v in self.evaluate(self.bare_model).items()})
                distributed.barrier()
            logs["time_per_epoch"] = epoch_times[-1]
            logs["eta"] = float(np.mean(epoch_times[-3:])) * (self.max_epochs - epoch)
            self.history.append({k: v for k, v in logs.items() if k != "eta"})
            self.last_epoch = epoch
            self._call("after_epoch", epoch, logs)
            distributed.barrier()
