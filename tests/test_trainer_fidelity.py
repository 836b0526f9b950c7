"""What TAO users' scripts read from training and TAO's resume recipe, on real components: the
Keras ``training.csv`` and ``events/``, the model summary, ``--init_epoch N`` continuing the
schedule and optimizer exactly, early stopping's state across a resume, and classification
training every image of an epoch."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from conftest import make_colour_images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from taoctl.engine import optim
from taoctl.engine.backbones import create_model
from taoctl.engine.runners import model_summary, summary_layers
from taoctl.engine.task import Run
from taoctl.engine.trainer import EarlyStoppingHook, EvalHook, Trainer
from taoctl.errors import TaoctlError

DATA = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
TARGET = (DATA[:, 0] > DATA[:, 1]).long()
STEPS = 2  # 32 samples in batches of 16


def accuracy_step(net, batch):
    x, y = batch
    logits = net(x)
    return nn.functional.cross_entropy(logits, y), {"accuracy": (logits.argmax(1) == y).float().mean().item()}


def make_trainer(results_dir, max_epochs, schedule=None, hooks=(), init_epoch=1, optimizer="adam"):
    """A tiny BatchNorm classifier under Adam and one of optim's schedules; the same seed gives the same run."""
    results_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    schedule = schedule or optim.SoftStartCosineSchedule(0.05, 0.001, 0.25, 6 * STEPS)
    adam = optim.build_optimizer(model, optim.OptimizerSpec(optimizer), optim.RegularizerSpec(), schedule.base_lr)
    loader = DataLoader(TensorDataset(DATA, TARGET), batch_size=16, shuffle=True, generator=torch.Generator())
    return Trainer(model, adam, loader, accuracy_step, results_dir, max_epochs, "tiny", {"task": "test"},
                   scheduler=optim.build_scheduler(adam, schedule), hooks=hooks, seed=3, init_epoch=init_epoch,
                   progress_interval_s=1e9)


def validation_loss_and_accuracy(net):
    logits = net(DATA)
    return {"loss": nn.functional.cross_entropy(logits, TARGET).item(),
            "accuracy": (logits.argmax(1) == TARGET).float().mean().item()}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def adam_moments(trainer) -> list[torch.Tensor]:
    return [value for state in trainer.optimizer.state.values() for value in state.values()]


# --------------------------------------------------------------------------- TAO's files
def test_training_csv_has_keras_columns_and_events_are_under_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(tmp_path, 3, hooks=[EvalHook(validation_loss_and_accuracy, period=2, first_epoch=2)])
    trainer.train()
    with open(tmp_path / "training.csv") as handle:
        rows = list(csv.reader(handle))
    # classification_tf1's CSVLogger under Keras 2.2.4: epoch from 1, then the logs sorted by name.
    assert rows[0] == ["epoch", "acc", "loss", "lr", "val_acc", "val_loss"]
    assert [row[0] for row in rows[1:]] == ["1", "2", "3"]
    history = trainer.history
    assert [float(row[1]) for row in rows[1:]] == [h["accuracy"] for h in history]
    assert [float(row[3]) for row in rows[1:]] == [h["lr"] for h in history]
    assert rows[1][4:] == ["", ""] and float(rows[2][5]) == history[1]["val_loss"]  # validated at 2 and 3 only
    assert "time_per_epoch" in (tmp_path / "metrics.csv").read_text().splitlines()[0]  # taoctl's file beside it
    events = EventAccumulator(str(tmp_path / "events")).Reload()
    assert [event.step for event in events.Scalars("val_accuracy")] == [2, 3]
    assert not (tmp_path / "tensorboard").exists()


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        features = self.stage(self.stem(x))
        return self.head(self.pool(features).flatten(1)), features


def layer_rows(summary: str) -> list[str]:
    return [line for line in summary.splitlines() if re.match(r"^\w[\w.]* \(", line)
            and not line.startswith("Layer (type)")]


def test_model_summary_lists_layers_with_shapes_and_changes_nothing():
    model = Blocks().train()
    model.stem[1].eval()  # a frozen BatchNorm stays frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    text = model_summary(model, (3, 16, 16))
    rows = {line.split()[0]: line for line in layer_rows(text)}
    assert list(rows) == ["stem.0", "stem.1", "stem.2", "stage.0", "stage.1", "stage.2", "pool", "head"]
    assert "(None, 8, 16, 16)" in rows["stem.0"] and "(None, 16, 8, 8)" in rows["stage.2"]
    assert "(None, 16, 1, 1)" in rows["pool"] and re.search(r"\(Linear\)\s+\(None, 5\)\s+85$", rows["head"])
    total = sum(p.numel() for p in model.parameters())
    assert f"Total params: {total:,}" in text and "Non-trainable params: 0" in text
    assert sum(int(line.split()[-1].replace(",", "")) for line in rows.values()) == total
    assert same_tensors(before, model.state_dict()) and torch.equal(rng_before, torch.get_rng_state())
    assert model.training and not model.stem[1].training and model.stage[1].training
    # Fewer rows allowed: the blocks, unopened; no input shape (a token model): no shapes.
    short = model_summary(model, None, max_rows=4)
    assert [line.split()[0] for line in layer_rows(short)] == [
        "stem", "stage", "pool", "head"]
    assert "(None" not in short


def test_summary_of_a_real_backbone_is_short_and_adds_up():
    model = create_model("resnet18", 3)
    layers = summary_layers(model)
    assert 5 <= len(layers) <= 40
    assert sum(p.numel() for _, m in layers for p in m.parameters()) == sum(p.numel() for p in model.parameters())
    rows = layer_rows(model_summary(model, (3, 64, 64)))
    assert len(rows) == len(layers) and rows[0].startswith("conv1 (Conv2d)") and "(None, 64, 32, 32)" in rows[0]
    assert re.search(r"^fc \(Linear\)\s+\(None, 3\)\s+1,539$", rows[-1])


# --------------------------------------------------------------------------- --init_epoch
def test_init_epoch_with_its_train_state_continues_exactly(tmp_path, capsys):
    straight = make_trainer(tmp_path / "straight", 4)
    straight.train()
    make_trainer(tmp_path / "again", 3).train()  # checkpoints of epochs 1-3, train states of 2 and 3
    capsys.readouterr()
    resumed = make_trainer(tmp_path / "again", 4, init_epoch=3)
    resumed.train()
    assert "Resuming from epoch 2 checkpoint" in capsys.readouterr().out
    assert resumed.start_epoch == 3 and resumed.global_step == straight.global_step == 4 * STEPS
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch
    assert same_tensors(straight.bare_model.state_dict(), resumed.bare_model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(adam_moments(straight), adam_moments(resumed)))
    assert [row["lr"] for row in resumed.history] == [row["lr"] for row in straight.history]
    # The state of the replaced epoch 3 is gone: a plain rerun resumes this run, not that one.
    assert sorted(p.name for p in (tmp_path / "again" / "train_state").iterdir()) == ["tiny_003.state",
                                                                                      "tiny_004.state"]


@pytest.mark.parametrize("weights_left", [True, False])
def test_init_epoch_without_train_state_moves_the_schedule_and_warns(tmp_path, capsys, weights_left):
    straight = make_trainer(tmp_path / "straight", 4)
    straight.train()
    make_trainer(tmp_path / "again", 2).train()
    (tmp_path / "again" / "train_state" / "tiny_002.state").unlink()
    if not weights_left:
        (tmp_path / "again" / "weights" / "tiny_002.tlt").unlink()
    capsys.readouterr()
    resumed = make_trainer(tmp_path / "again", 4, init_epoch=3)
    resumed.train()
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "--init_epoch 3" in warnings[0] and "fresh optimizer moments" in warnings[0]
    assert ("continuing from" in warnings[0]) == weights_left
    assert resumed.start_epoch == 3 and resumed.global_step == 4 * STEPS
    assert [row["lr"] for row in resumed.history] == [row["lr"] for row in straight.history[2:]]
    # Adam's step count: only this run's steps, the moments started afresh.
    assert {int(state["step"]) for state in resumed.optimizer.state.values()} == {2 * STEPS}


# --------------------------------------------------------------------------- early stopping
COSTS = [1.0, 0.9, 0.95, 0.95, 0.97, 0.97, 0.97, 0.97, 0.97, 0.97]


def early_stopping_trainer(results_dir, max_epochs):
    """No gain after epoch 2: annealing starts at the end of epoch 4 (patience 2), lasts 2 epochs,
    and with no gain for 2 more epochs training stops at epoch 7."""
    schedule = optim.EarlyStoppingAnnealingSchedule(base_lr=0.05, min_lr=0.0005, soft_start_steps=STEPS,
                                                    annealing_steps=2 * STEPS, patience_epochs=2)
    running = {}
    hooks = [EvalHook(lambda net: {"cost": COSTS[running["trainer"].epoch - 1]}), EarlyStoppingHook(schedule)]
    running["trainer"] = make_trainer(results_dir, max_epochs, schedule=schedule, hooks=hooks, optimizer="sgd")
    return running["trainer"], schedule


def test_early_stopping_anneals_stops_and_resumes_with_its_state(tmp_path):
    straight, schedule = early_stopping_trainer(tmp_path / "straight", 10)
    straight.train()
    assert straight.last_epoch == 7 and schedule.annealing_start_step == 4 * STEPS
    assert sorted(p.name for p in (tmp_path / "straight" / "weights").iterdir())[-1] == "tiny_007.tlt"
    lrs = [row["lr"] for row in straight.history]
    assert lrs[1] == lrs[3] == pytest.approx(0.05) and lrs[5] == pytest.approx(0.0005)
    rerun, _ = early_stopping_trainer(tmp_path / "straight", 10)
    rerun.train()  # the same command again: the run is finished, nothing more is trained
    assert rerun.last_epoch == 7 and len(rerun.history) == 7

    early, _ = early_stopping_trainer(tmp_path / "resumed", 5)
    early.train()
    resumed, restored = early_stopping_trainer(tmp_path / "resumed", 10)
    resumed.train()
    assert resumed.start_epoch == 6 and resumed.last_epoch == 7
    assert restored.annealing_start_step == 4 * STEPS and restored.best_epoch == 4
    assert [row["lr"] for row in resumed.history] == lrs
    assert same_tensors(straight.bare_model.state_dict(), resumed.bare_model.state_dict())


def test_early_stopping_without_a_validation_cost_is_one_clear_error(tmp_path):
    schedule = optim.EarlyStoppingAnnealingSchedule(0.05, 0.0005, STEPS, STEPS, 2)
    trainer = make_trainer(tmp_path, 2, schedule=schedule, optimizer="sgd",
                           hooks=[EvalHook(lambda net: {"mAP": 0.5}), EarlyStoppingHook(schedule)])
    with pytest.raises(TaoctlError, match="no val_cost for early_stopping_annealing_schedule .*val_mAP"):
        trainer.train()


# --------------------------------------------------------------------------- classification's epoch
SPEC = """
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" use_batch_norm: true }}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ lr: 0.01 }} }}
  lr_config {{ step {{ learning_rate: 0.01 step_size: 50 gamma: 0.5 }} }}
  batch_size_per_gpu: 4
  n_epochs: 1
  n_workers: 0
}}
"""


@pytest.mark.parametrize("images, sizes", [(18, [4, 4, 4, 4, 2]), (17, [4, 4, 4, 4])])
def test_classification_trains_the_last_partial_batch(tmp_path, images, sizes):
    """18 images in batches of 4: the last 2 are trained; 17: a last batch of one image is left out
    (BatchNorm cannot train on it)."""
    from taoctl.tasks.classification.task import TASK

    data = make_colour_images(tmp_path / "data", {"train": 9, "val": 1})
    for extra in range(18 - images):
        (data / "train" / "red" / f"{extra}.png").unlink()
    spec = tmp_path / "spec.txt"
    spec.write_text(SPEC.format(data=data))
    run = Run(subtask="train", flags={}, spec_path=str(spec), results_dir=tmp_path / "run")
    run.results_dir.mkdir()
    run.spec = TASK.load_spec(run)
    loader = TASK.train_data(run).loader
    assert [len(labels) for _, labels in loader] == sizes and len(loader) == len(sizes)


def test_detectnet_early_stopping_schedule_is_fed_its_validation_cost(tmp_path, taoctl):
    """detectnet_v2's early_stopping_annealing_schedule through the real command: each validation's
    cost reaches the schedule, whose state the checkpoint keeps; training.csv has the cost."""
    from test_detectnet_cli import _spec, _write_kitti

    from taoctl.engine.modelfile import load_state

    data = tmp_path / "kitti"
    _write_kitti(data, 12)
    convert = tmp_path / "convert.txt"
    convert.write_text(f'''kitti_config {{ root_directory_path: "{data}" image_dir_name: "images"
  label_dir_name: "labels" image_extension: ".png" partition_mode: "random" num_partitions: 2
  val_split: 25 num_shards: 1 }}
image_directory_path: "{data}"
''')
    taoctl("detectnet_v2", "dataset_convert", "-d", convert, "-o", tmp_path / "tfrecords" / "kitti",
           "-r", tmp_path / "convert", check=True)
    spec = tmp_path / "spec.txt"
    text = _spec(data, f"{tmp_path}/tfrecords/kitti*", epochs=2)
    schedule = re.search(r"learning_rate \{ soft_start_annealing_schedule \{.*?\} \}", text, re.S).group(0)
    spec.write_text(text.replace(schedule, "learning_rate { early_stopping_annealing_schedule { min_learning_rate: "
                                           "1e-4 max_learning_rate: 2e-3 soft_start_epochs: 1 annealing_epochs: 1 "
                                           "patience_steps: 1 } }"))
    taoctl("detectnet_v2", "train", "-e", spec, "-r", tmp_path / "train", check=True)
    state = load_state(tmp_path / "train" / "train_state" / "model_002.state")
    with open(tmp_path / "train" / "training.csv") as handle:
        rows = list(csv.DictReader(handle))
    costs = [float(row["val_cost"]) for row in rows]
    assert len(costs) == 2 and "val_mAP" in rows[0]
    # Patience 1: epoch 2 either improves on epoch 1 or starts annealing; both make it the best so far.
    schedule_state = state["scheduler"]["schedule_state"]
    assert schedule_state["best_epoch"] == 2 and schedule_state["best_cost"] == pytest.approx(costs[1])
    assert (schedule_state["annealing_start_step"] is None) == (costs[1] < costs[0])
    if costs[1] >= costs[0]:
        assert schedule_state["annealing_start_step"] == state["global_step"]
