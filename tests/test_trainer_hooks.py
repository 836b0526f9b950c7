"""Trainer hooks on a tiny real model: hook points, periodic validation, the best checkpoint,
gradient clipping, EMA of the weights, and replacing a default hook."""

import csv
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from taoctl.engine.modelfile import load_model
from taoctl.engine.trainer import EvalHook, Hook, ProgressHook, StatusHook, Trainer
from taoctl.errors import TaoctlError

DATA = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
TARGET = (DATA[:, 0] > DATA[:, 1]).long()


def loss_fn(net, batch):
    x, y = batch
    return nn.functional.cross_entropy(net(x), y), {}


def make_trainer(results_dir, max_epochs, hooks=(), lr=0.1, loss_scale=1.0, **kwargs):
    """16-sample batches, 2 steps per epoch; the same seed gives the same run."""
    results_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    loader = DataLoader(TensorDataset(DATA, TARGET), batch_size=16, shuffle=True, generator=torch.Generator())

    def scaled_loss(net, batch):
        loss, metrics = loss_fn(net, batch)
        return loss * loss_scale, metrics

    return Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), loader, scaled_loss, results_dir, max_epochs,
                   "tiny", {"task": "test"}, hooks=hooks, seed=3, progress_interval_s=1e9, **kwargs)


def scripted_evaluate(values):
    """An evaluate function giving ``values`` in turn as ``mAP``, recording the model it saw."""
    seen = []

    def evaluate(net):
        seen.append((net, net.training, torch.is_grad_enabled()))
        return {"mAP": values[len(seen) - 1]}

    return evaluate, seen


def status_lines(results_dir):
    return [json.loads(line) for line in (results_dir / "status.json").read_text().splitlines()]


def metrics_rows(results_dir):
    with open(results_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


class Recorder(Hook):
    main_only = False

    def __init__(self):
        self.calls = []

    def before_train(self, trainer):
        self.calls.append("before_train")

    def before_epoch(self, trainer, epoch):
        self.calls.append(f"before_epoch {epoch}")

    def before_step(self, trainer, step, steps):
        self.calls.append(f"before_step {step}/{steps}")

    def after_step(self, trainer, step, steps, logs):
        self.calls.append(f"after_step {step}/{steps}")

    def after_epoch(self, trainer, epoch, logs):
        self.calls.append(f"after_epoch {epoch}")

    def after_train(self, trainer, status, message):
        self.calls.append(f"after_train {status}")


def test_hook_points_are_called_in_order(tmp_path):
    recorder = Recorder()
    make_trainer(tmp_path, 2, hooks=[recorder]).train()
    epoch = ["before_step 1/2", "after_step 1/2", "before_step 2/2", "after_step 2/2"]
    assert recorder.calls == (["before_train", "before_epoch 1", *epoch, "after_epoch 1", "before_epoch 2", *epoch,
                               "after_epoch 2", "after_train SUCCESS"])


def test_validation_runs_from_the_first_epoch_every_period_and_at_the_last(tmp_path, capsys):
    evaluate, seen = scripted_evaluate([0.1, 0.2, 0.3])
    make_trainer(tmp_path, 7, hooks=[EvalHook(evaluate, period=3, first_epoch=2)]).train()
    validated = [2, 5, 7]
    assert len(seen) == 3 and all(not training and not grad for _, training, grad in seen)
    rows = metrics_rows(tmp_path)
    assert [int(row["epoch"]) for row in rows] == list(range(1, 8))
    # Epochs without validation have an empty cell, not the previous value.
    assert {int(row["epoch"]): row["val_mAP"] for row in rows if row["val_mAP"]} == {2: "0.1", 5: "0.2", 7: "0.3"}
    running = [line for line in status_lines(tmp_path) if line["status"] == "RUNNING"]
    assert [line["epoch"] for line in running if "val_mAP" in line["metrics"]] == validated
    assert running[1]["metrics"]["val_mAP"] == 0.1 and "best" not in running[1]
    events = EventAccumulator(str(tmp_path / "events")).Reload()
    assert [event.step for event in events.Scalars("val_mAP")] == validated
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert "val_mAP 0.2000" in progress[4] and "val_mAP" not in progress[5]


@pytest.mark.parametrize("mode, best_epoch, best_value", [("max", 2, 0.7), ("min", 5, 0.1)])
def test_best_checkpoint_is_the_epoch_with_the_best_metric(tmp_path, mode, best_epoch, best_value):
    evaluate, _ = scripted_evaluate([0.2, 0.7, 0.5, 0.7, 0.1])
    trainer = make_trainer(tmp_path, 5, hooks=[EvalHook(evaluate, best_metric="mAP", mode=mode)])
    trainer.train()
    best = {"metric": "val_mAP", "epoch": best_epoch, "value": best_value}
    assert trainer.best == best
    saved = load_model(tmp_path / "weights" / "tiny_best.tlt")
    assert saved.manifest["epoch"] == best_epoch and saved.manifest["best"] == best
    same_epoch = load_model(tmp_path / "weights" / f"tiny_{best_epoch:03d}.tlt").state_dict
    assert all(torch.equal(saved.state_dict[k], same_epoch[k]) for k in same_epoch)
    lines = status_lines(tmp_path)
    assert lines[-1]["status"] == "SUCCESS" and lines[-1]["best"] == best
    assert [line["best"]["epoch"] for line in lines if line["status"] == "RUNNING"] == (
        [1, 2, 2, 2, 2] if mode == "max" else [1, 1, 1, 1, 5])


def test_resumed_run_keeps_the_best_found_before(tmp_path):
    evaluate, _ = scripted_evaluate([0.2, 0.9, 0.5])
    make_trainer(tmp_path, 3, hooks=[EvalHook(evaluate, best_metric="mAP")]).train()
    best_file = tmp_path / "weights" / "tiny_best.tlt"
    before = best_file.read_bytes()
    evaluate, seen = scripted_evaluate([0.6, 0.8])  # epochs 4 and 5: better than 0.5, worse than 0.9
    trainer = make_trainer(tmp_path, 5, hooks=[EvalHook(evaluate, best_metric="mAP")])
    trainer.train()
    assert len(seen) == 2 and trainer.start_epoch == 4
    assert trainer.best == {"metric": "val_mAP", "epoch": 2, "value": 0.9}
    assert best_file.read_bytes() == before
    assert status_lines(tmp_path)[-1]["best"]["epoch"] == 2


def test_best_metric_missing_from_the_evaluation_is_one_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, 1, hooks=[EvalHook(lambda net: {"loss": 1.0}, best_metric="mAP")])
    with pytest.raises(TaoctlError, match="no val_mAP to choose the best checkpoint by .*val_loss"):
        trainer.train()


@pytest.mark.parametrize("arguments", [{"period": 0}, {"first_epoch": 0}, {"mode": "highest"}])
def test_bad_validation_settings_are_refused(arguments):
    with pytest.raises(TaoctlError):
        EvalHook(lambda net: {}, **arguments)


class StepMeter(Hook):
    """Gradient norm and parameter change of every step (SGD with lr 1 moves by the gradient)."""

    main_only = False

    def __init__(self):
        self.grad_norms, self.deltas, self.before = [], [], None

    def before_step(self, trainer, step, steps):
        self.before = torch.cat([p.detach().flatten().clone() for p in trainer.bare_model.parameters()])

    def after_step(self, trainer, step, steps, logs):
        params = list(trainer.bare_model.parameters())
        self.grad_norms.append(float(torch.cat([p.grad.flatten() for p in params]).norm()))
        self.deltas.append(float((torch.cat([p.detach().flatten() for p in params]) - self.before).norm()))


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_clipping_bounds_the_gradient_norm(tmp_path, loss_scaling):
    unclipped, clipped = StepMeter(), StepMeter()
    make_trainer(tmp_path / "unclipped", 2, hooks=[unclipped], lr=1.0, loss_scale=50.0).train()
    trainer = make_trainer(tmp_path / "clipped", 2, hooks=[clipped], lr=1.0, loss_scale=50.0, clip_grad_norm=0.5)
    if loss_scaling:
        # AMP's loss scaling (CPU has a GradScaler too): clipping must see the unscaled gradients.
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.train()
    assert min(unclipped.grad_norms) > 0.5
    assert clipped.grad_norms == pytest.approx([0.5] * 4, rel=1e-4)
    assert clipped.deltas == pytest.approx([0.5] * 4, rel=1e-3)


def test_ema_follows_its_formula_and_is_what_is_evaluated_and_saved(tmp_path):
    class Snapshots(Hook):
        main_only = False

        def __init__(self):
            self.raw, self.ema = [], []

        def after_step(self, trainer, step, steps, logs):
            self.raw.append({k: v.clone() for k, v in trainer.bare_model.state_dict().items()})
            self.ema.append({k: v.clone() for k, v in trainer.ema.module.state_dict().items()})

    snapshots = Snapshots()
    evaluate, seen = scripted_evaluate([0.5, 0.5])
    trainer = make_trainer(tmp_path, 2, hooks=[snapshots, EvalHook(evaluate)], ema_decay=0.9)
    returned = trainer.train()
    raw, ema = snapshots.raw, snapshots.ema
    floats = [k for k, v in raw[0].items() if v.is_floating_point()]  # parameters and BN running stats
    # The first update copies the weights; each later one is decay * EMA + (1 - decay) * weights.
    assert all(torch.equal(ema[0][k], raw[0][k]) for k in floats)
    for step in range(1, 4):
        for k in floats:
            torch.testing.assert_close(ema[step][k], 0.9 * ema[step - 1][k] + 0.1 * raw[step][k])
    assert not torch.allclose(ema[3]["0.weight"], raw[3]["0.weight"])
    assert returned is trainer.ema.module and all(net is trainer.ema.module for net, _, _ in seen)
    saved = load_model(tmp_path / "weights" / "tiny_002.tlt").state_dict
    assert all(torch.equal(saved[k], ema[3][k]) for k in floats)


def test_resume_restores_the_ema_and_matches_an_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "straight", 4, ema_decay=0.8, clip_grad_norm=1.0)
    straight.train()
    make_trainer(tmp_path / "resumed", 2, ema_decay=0.8, clip_grad_norm=1.0).train()
    resumed = make_trainer(tmp_path / "resumed", 4, ema_decay=0.8, clip_grad_norm=1.0)
    resumed.train()
    assert resumed.start_epoch == 3
    for a, b in ((straight.bare_model, resumed.bare_model), (straight.ema, resumed.ema)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert int(resumed.ema.n_averaged) == 8


def test_a_hook_named_like_a_default_takes_its_place(tmp_path, capsys):
    class TaskStatusHook(StatusHook):
        def after_epoch(self, trainer, epoch, logs):
            self.write("RUNNING", "Task epoch done", epoch=epoch)

    class NoProgress(Hook):
        name = "progress"

    evaluate, _ = scripted_evaluate([0.5])
    own_status = TaskStatusHook(tmp_path / "task_status.json")
    trainer = make_trainer(tmp_path / "run", 1, hooks=[own_status, NoProgress(), EvalHook(evaluate)])
    assert [hook for hook in trainer.hooks if isinstance(hook, StatusHook)] == [own_status]
    assert not any(isinstance(hook, ProgressHook) for hook in trainer.hooks)
    assert isinstance(trainer.hooks[0], EvalHook)  # it fills the logs the others write
    trainer.train()
    assert not (tmp_path / "run" / "status.json").exists()
    lines = [json.loads(line) for line in (tmp_path / "task_status.json").read_text().splitlines()]
    assert [(line["status"], line["message"]) for line in lines] == [
        ("STARTED", "Starting Training Loop."), ("RUNNING", "Task epoch done"),
        ("SUCCESS", "Training finished successfully.")]
    assert not any(line.startswith("Epoch 1/1") for line in capsys.readouterr().out.splitlines())


def test_two_hooks_with_one_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="several hooks named status"):
        make_trainer(tmp_path, 1, hooks=[StatusHook(tmp_path / "a.json"), StatusHook(tmp_path / "b.json")])
