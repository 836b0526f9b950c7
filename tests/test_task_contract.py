"""A second task, defined only in this file, run through the engine's runners and shared flags.

``TWO_HEAD`` is a tiny two-head regressor on generated images (is there a bright square, and
where is its centre): a coverage head and a box head, like a detector's ``output_cov`` /
``output_bbox``. It trains with periodic validation and a best checkpoint, evaluates (model
file and ONNX), prunes with both heads kept whole, and exports an ONNX model with two outputs
through the same runners and flags as classification, with no line outside this file. Its
YAML spec (this module's KINDS) also takes the runners' ``key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from taoctl.engine import export, optim
from taoctl.engine.cli import run_command
from taoctl.engine.commands import subtask_command
from taoctl.engine.spec import SpecKind
from taoctl.engine.task import Evaluator, Task, TrainData, Validation
from taoctl.fileio import write_atomic

TASK_REF = f"{__name__}:TWO_HEAD"
OUTPUTS = ("output_cov/Sigmoid", "output_bbox/BiasAdd")


# --------------------------------------------------------------------------- the spec
@dataclasses.dataclass
class DataConfig:
    train_samples: int = 256
    val_samples: int = 32
    image_size: int = 32
    seed: int = 0


@dataclasses.dataclass
class ModelConfig:
    width: int = 16


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 0.01
    validation_period: int = 2
    first_validation_epoch: int = 1
    clip_grad_norm: float = 5.0


@dataclasses.dataclass
class Experiment:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


KINDS = {"experiment": SpecKind("experiment", schema=Experiment)}


# --------------------------------------------------------------------------- data and model
def make_samples(count: int, size: int, seed: int):
    """uint8 images (N x 3 x S x S), coverage (1 where a bright square is) and its centre in [0, 1]."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (count, 3, size, size), dtype=np.uint8)
    cover = rng.random(count) < 0.6
    centres = np.zeros((count, 2), np.float32)
    for i in np.flatnonzero(cover):
        side = int(rng.integers(size // 4, size // 2))
        x, y = rng.integers(0, size - side, 2)
        images[i, :, y:y + side, x:x + side] = 220
        centres[i] = ((x + side / 2) / size, (y + side / 2) / size)
    return images, cover.astype(np.float32), centres


class TwoHeadNet(nn.Module):
    head_names = ("output_cov", "output_bbox")

    def __init__(self, width: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.output_cov = nn.Linear(2 * width, 1)
        self.output_bbox = nn.Linear(2 * width, 2)

    def forward(self, x):
        z = self.features(x)
        return self.output_cov(z).squeeze(1), self.output_bbox(z)


class Deployed(nn.Module):
    """What is exported: coverage as a probability, the box as it is."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        cov, bbox = self.model(x)
        return torch.sigmoid(cov), bbox


class TwoHeadEvaluator(Evaluator):
    def __init__(self, images, cover, centres):
        self.images, self.cover, self.centres = images, cover, centres

    def run(self, predictor):
        cov, bbox = predictor(self.images)
        found = self.cover > 0
        return {"coverage_accuracy": float(((cov > 0.5) == found).mean()),
                "centre_error": float(np.abs(bbox[found] - self.centres[found]).mean()),
                "images": len(self.images), "model": predictor.source}

    def summary(self, report):
        return {"coverage_accuracy": report["coverage_accuracy"], "centre_error": report["centre_error"]}

    def write(self, report, out_dir: Path):
        print(f"coverage accuracy {report['coverage_accuracy']:.4f} centre error {report['centre_error']:.4f}")
        write_atomic(Path(out_dir) / "results.json", json.dumps(report))


class TwoHeadTask(Task):
    name = "two_head"
    spec_module = __name__

    def model_from_manifest(self, manifest):
        return TwoHeadNet(manifest["width"])

    def manifest(self, run, data, spec_text):
        return {"task": self.name, "width": run.spec.model.width,
                "input_shape": [3, run.spec.data.image_size, run.spec.data.image_size], "spec": spec_text}

    def preprocess(self, manifest):
        return lambda images: (images.astype(np.float32) - 127.5) / 127.5

    def epochs(self, run):
        return run.spec.train.epochs

    def train_data(self, run):
        d = run.spec.data
        images, cover, centres = make_samples(d.train_samples, d.image_size, d.seed)
        dataset = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(cover),
                                                 torch.from_numpy(centres))
        loader = torch.utils.data.DataLoader(dataset, batch_size=run.spec.train.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(d.seed))
        return TrainData(loader, val=make_samples(d.val_samples, d.image_size, d.seed + 1))

    def build_model(self, run, data):
        return TwoHeadNet(run.spec.model.width)

    def optimization(self, run, steps_per_epoch):
        lr = run.spec.train.learning_rate
        schedule = optim.SoftStartCosineSchedule(lr, lr / 20, 0.1, steps_per_epoch * self.epochs(run))
        return optim.OptimizationSpec(optim.OptimizerSpec("adam"), optim.RegularizerSpec("L1", 1e-5), schedule)

    def trainer_options(self, run):
        return {"clip_grad_norm": run.spec.train.clip_grad_norm}

    def training_step(self, run, model, data):
        def step(net, batch):
            images, cover, centres = batch
            cov, bbox = net((images.float() - 127.5) / 127.5)
            cov_loss = nn.functional.binary_cross_entropy_with_logits(cov, cover)
            box_loss = (cover[:, None] * (bbox - centres).abs()).mean()
            return cov_loss + box_loss, {"cov_loss": cov_loss.item(), "box_loss": box_loss.item()}

        return step

    def validation(self, run, data):
        t = run.spec.train
        return Validation(TwoHeadEvaluator(*data.val), period=t.validation_period,
                          first_epoch=t.first_validation_epoch, best_metric="coverage_accuracy")

    def evaluator(self, run, manifest):
        d = run.spec.data
        return TwoHeadEvaluator(*make_samples(d.val_samples, d.image_size, d.seed + 1))

    def onnx_manifest(self, run, onnx_path):
        return {"input_shape": [3, run.spec.data.image_size, run.spec.data.image_size]}

    def export_adapter(self, run, model, manifest):
        return export.ExportAdapter(Deployed(model), input_names=("input",), output_names=OUTPUTS,
                                    dynamic_axes={"input": {0: export.BATCH}})

    def sample_inputs(self, run, manifest, folder, count):
        return make_samples(count, manifest["input_shape"][1], 7)[0]


TWO_HEAD = TwoHeadTask()


# --------------------------------------------------------------------------- the runs
def taoctl_two_head(subtask: str, *args) -> int:
    """Run a subtask of the test task in this process, through the shared flags and runners."""
    return run_command(subtask_command(subtask, TASK_REF, f"two_head {subtask}"), [str(a) for a in args],
                       prog_name=f"taoctl two_head {subtask}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_head")
    spec = root / "spec.yaml"
    spec.write_text("data:\n  image_size: 32\ntrain:\n  epochs: 4\n  validation_period: 2\n")
    assert taoctl_two_head("train", "-e", spec, "-r", root / "run", "train.learning_rate=0.02") == 0
    return root, spec


def test_trains_with_periodic_validation_and_a_best_checkpoint(trained):
    root, _ = trained
    rows = [json.loads(line) for line in (root / "run" / "status.json").read_text().splitlines()]
    validated = [row["epoch"] for row in rows
                 if row["status"] == "RUNNING" and "val_coverage_accuracy" in row["metrics"]]
    assert validated == [1, 3, 4]  # first_validation_epoch 1, every 2 epochs, and the last
    assert rows[-1]["status"] == "SUCCESS"
    weights = sorted(p.name for p in (root / "run" / "weights").iterdir())
    assert "two_head_004.tlt" in weights and "two_head_best.tlt" in weights


def test_evaluates_the_model_file(trained, capsys):
    root, spec = trained
    assert taoctl_two_head("evaluate", "-e", spec, "-m", root / "run" / "weights" / "two_head_004.tlt",
                           "-r", root / "eval") == 0
    report = json.loads((root / "eval" / "results.json").read_text())
    assert report["coverage_accuracy"] > 0.8
    status = [json.loads(line)["status"] for line in (root / "eval" / "status.json").read_text().splitlines()]
    assert status == ["STARTED", "SUCCESS"]


def test_prunes_keeping_both_heads_and_exports_two_outputs(trained):
    import onnx

    from taoctl.engine import modelfile
    from taoctl.engine.export import run_onnx

    root, spec = trained
    model = root / "run" / "weights" / "two_head_004.tlt"
    pruned = root / "pruned.tlt"
    assert taoctl_two_head("prune", "-m", model, "-o", pruned, "-pth", "0.9", "-pg", "4", "-nf", "4") == 0
    original, pruned_model = TWO_HEAD.load_model(model, None)[0], TWO_HEAD.load_model(pruned, None)[0]
    assert sum(p.numel() for p in pruned_model.parameters()) < sum(p.numel() for p in original.parameters())
    assert pruned_model.output_cov.out_features == 1 and pruned_model.output_bbox.out_features == 2
    assert modelfile.load_model(pruned).manifest["pruning"]["threshold"] == 0.9

    onnx_path = root / "export" / "two_head.onnx"
    (root / "cal").mkdir()  # the task makes its own sample inputs; the runner only passes the folder on
    assert taoctl_two_head("export", "-m", pruned, "-o", onnx_path, "--cal_image_dir", root / "cal") == 0
    graph = onnx.load(str(onnx_path)).graph
    assert [o.name for o in graph.output] == list(OUTPUTS)
    images, _, _ = make_samples(5, 32, 3)
    inputs = TWO_HEAD.preprocess({})(images)
    outputs = run_onnx(onnx_path, inputs)
    with torch.no_grad():
        expected = Deployed(pruned_model).eval()(torch.from_numpy(inputs))
    for name, value in zip(OUTPUTS, expected):
        assert np.allclose(outputs[name], value.numpy(), atol=1e-4)

    assert taoctl_two_head("evaluate", "-e", spec, "-m", onnx_path, "-r", root / "eval_onnx") == 0
    assert taoctl_two_head("evaluate", "-e", spec, "-m", pruned, "-r", root / "eval_pruned") == 0
    onnx_report = json.loads((root / "eval_onnx" / "results.json").read_text())
    torch_report = json.loads((root / "eval_pruned" / "results.json").read_text())
    assert onnx_report["coverage_accuracy"] == torch_report["coverage_accuracy"]
    assert abs(onnx_report["centre_error"] - torch_report["centre_error"]) < 1e-4


def test_an_override_with_a_typo_is_one_did_you_mean_line(trained, tmp_path, capsys):
    _, spec = trained
    assert taoctl_two_head("train", "-e", spec, "-r", tmp_path / "r", "train.epoch=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'did you mean "epochs"' in err[0] and "train.epoch=3" in err[0]
    assert not (tmp_path / "r").exists()


def test_log_file_holds_what_the_console_showed_and_the_error_line(trained, tmp_path):
    root, spec = trained
    log = tmp_path / "logs" / "evaluate.log"
    model = root / "run" / "weights" / "two_head_004.tlt"
    assert taoctl_two_head("evaluate", "-e", spec, "-m", model, "-r", tmp_path / "eval", "--log_file", log) == 0
    assert "coverage accuracy" in log.read_text()
    assert taoctl_two_head("evaluate", "-e", spec, "-m", tmp_path / "missing.tlt", "--log_file", log) == 2
    last = log.read_text().splitlines()[-1]
    assert last.startswith("taoctl: ") and "missing.tlt" in last


def test_flags_out_of_range_are_one_line_before_any_work(trained, tmp_path, capsys):
    root, spec = trained
    model = root / "run" / "weights" / "two_head_004.tlt"
    for flags, expected in ((("-b", "0"), "--batch_size must be >= 1, got 0"),
                            (("--gpus", "0"), "--gpus must be >= 1, got 0")):
        assert taoctl_two_head("evaluate", "-e", spec, "-m", model, "-r", tmp_path / "e", *flags) == 2
        assert expected in capsys.readouterr().err
    assert taoctl_two_head("prune", "-m", model, "-o", tmp_path / "p.tlt", "-pth", "nan") == 2
    assert "--pruning_threshold must be a number in [0, 1], got nan" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "p.tlt").exists()


def test_init_epoch_beyond_the_spec_and_np_zero_are_refused(trained, tmp_path, capsys):
    _, spec = trained
    assert taoctl_two_head("train", "-e", spec, "-r", tmp_path / "r", "--init_epoch", "9") == 2
    assert "--init_epoch 9 is beyond the spec's 4 epochs" in capsys.readouterr().err
    assert taoctl_two_head("train", "-e", spec, "-r", tmp_path / "r", "-np", "0") == 2
    assert "-np/--num_processes must be >= 1 (or -1: one per GPU), got 0" in capsys.readouterr().err
    # Nothing but the FAILURE line of the refused --init_epoch: no claim on the dir, no checkpoint.
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["status.json"]


def test_an_onnx_of_another_input_size_is_named_before_it_runs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from taoctl.engine.task import OnnxPredictor
    from taoctl.errors import TaoctlError

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(TaoctlError, match=r"takes input \[3, 8, 8\], the spec gives \[3, 16, 24\]"):
        OnnxPredictor(path, lambda x: x, {"input_shape": [3, 16, 24]})
    assert OnnxPredictor(path, lambda x: x, {"input_shape": [3, 8, 8]}).input_shape == (3, 8, 8)
