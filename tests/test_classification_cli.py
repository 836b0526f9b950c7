"""The classification workflow end to end through the real `taoctl` command, on a tiny generated set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}

SPEC = """
model_config {{
  arch: "resnet"
  n_layers: 10
  input_image_size: "3,32,32"
  use_batch_norm: true
}}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  {pretrained}
  optimizer {{ adam {{ lr: 0.003 }} }}
  lr_config {{ step {{ learning_rate: 0.003 step_size: 50 gamma: 0.5 }} }}
  reg_config {{ type: "L1" scope: "Conv2D" weight_decay: 0.000001 }}
  batch_size_per_gpu: 8
  n_epochs: {epochs}
  n_workers: 0
  random_seed: 7
  enable_random_crop: true
  enable_center_crop: true
  mixup_alpha: 0.2
  preprocess_mode: "tf"
}}
eval_config {{
  eval_dataset_path: "{data}/val"
  top_k: 2
  batch_size: 4
  enable_center_crop: true
}}
"""


def _make_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 4)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                noise = rng.integers(-30, 30, (36, 40, 3))
                array = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(array).save(folder / f"{name} {i}.png")
    (root / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("cls")
    data = root / "data"
    _make_data(data)
    spec = root / "spec.txt"
    spec.write_text(SPEC.format(data=data, pretrained="", epochs=2))
    run = root / "run"
    train = taoctl("classification", "train", "-e", str(spec), "-r", str(run), "-k", "secret", check=True)
    return root, data, spec, run, train


def test_train_outputs(workflow):
    root, data, spec, run, train = workflow
    assert "broken.jpg" in train.stdout + train.stderr  # the summary names the skipped file
    assert json.loads((run / "classmap.json").read_text()) == {"blue": 0, "green": 1, "red": 2}
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["resnet_001.tlt", "resnet_002.tlt"]
    status = [json.loads(line) for line in (run / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "SUCCESS"
    assert "val_accuracy" in (run / "metrics.csv").read_text()


def test_evaluate_and_wrong_key(workflow, taoctl):
    root, data, spec, run, _ = workflow
    out = root / "eval"
    result = taoctl("classification", "evaluate", "-e", str(spec), "-m", str(run / "weights" / "resnet_002.tlt"),
                    "-k", "secret", "-r", str(out), check=True)
    report = json.loads((out / "results.json").read_text())
    assert report["num_images"] == 12 and report["top_k"] == 2
    assert f"top-1 accuracy: {report['top1_accuracy'] * 100:.2f} %" in result.stdout
    assert (out / "confusion_matrix.png").stat().st_size > 0
    bad = taoctl("classification", "evaluate", "-e", str(spec), "-m", str(run / "weights" / "resnet_002.tlt"),
                 "-k", "nope", check=False)
    assert bad.returncode == 2 and "wrong key" in bad.stderr and "Traceback" not in bad.stderr


def test_inference_dir_and_single_image(workflow, taoctl):
    root, data, spec, run, _ = workflow
    model = str(run / "weights" / "resnet_002.tlt")
    out = root / "infer"
    taoctl("classification", "inference", "-e", str(spec), "-m", model, "-k", "secret", "-cm",
           str(run / "classmap.json"), "-d", str(data / "val" / "red"), "-b", "3", "-r", str(out), check=True)
    rows = list(csv.reader((out / "result.csv").open()))  # TAO's: path, class name, confidence; no header
    assert len(rows) == 4 and {r[1] for r in rows} <= set(COLOURS)
    assert all(0 < float(r[2]) <= 1 for r in rows)
    one = taoctl("classification", "inference", "-e", str(spec), "-m", model, "-k", "secret", "-cm",
                 str(run / "classmap.json"), "-i", str(data / "val" / "blue" / "blue 0.png"), check=True)
    assert "Current predictions: [[" in one.stdout and "Class name = " in one.stdout
    broken = taoctl("classification", "inference", "-e", str(spec), "-m", model, "-k", "secret", "-cm",
                    str(run / "classmap.json"), "-i", str(data / "train" / "red" / "broken.jpg"))
    assert broken.returncode == 2 and "none of the 1 image(s) could be read" in broken.stderr
    assert "broken.jpg" in broken.stderr and "Traceback" not in broken.stderr


def test_prune_retrain_export_and_onnx_evaluate(workflow, taoctl):
    root, data, spec, run, _ = workflow
    pruned = root / "pruned.tlt"
    result = taoctl("classification", "prune", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                    "-o", str(pruned), "-pth", "0.8", "-pg", "4", "-nf", "4", "-eq", "arithmetic_mean", check=True)
    assert "parameters" in result.stdout and "Wrote" in result.stdout
    retrain_spec = root / "retrain.txt"
    retrain_spec.write_text(SPEC.format(data=data, pretrained=f'pretrained_model_path: "{pruned}"', epochs=1))
    taoctl("classification", "train", "-e", str(retrain_spec), "-r", str(root / "retrain"), "-k", "secret", check=True)
    retrained = root / "retrain" / "weights" / "resnet_001.tlt"
    onnx_path = root / "export" / "model.onnx"
    exported = taoctl("classification", "export", "-m", str(retrained), "-k", "secret", "-o", str(onnx_path),
                      "-e", str(retrain_spec), "--gen_ds_config", "--engine_file", str(root / "export" / "m.engine"),
                      check=True)
    assert "max abs diff" in exported.stdout and "tensorrt" in exported.stdout
    assert (root / "export" / "labels.txt").read_text().split() == ["blue", "green", "red"]
    assert "network-type=1" in (root / "export" / "nvinfer_config.txt").read_text()
    tlt_eval = taoctl("classification", "evaluate", "-e", str(retrain_spec), "-m", str(retrained), "-k", "secret",
                      "-r", str(root / "e_tlt"), check=True)
    onnx_eval = taoctl("classification", "evaluate", "-e", str(retrain_spec), "-m", str(onnx_path),
                       "-r", str(root / "e_onnx"), check=True)
    tlt_report = json.loads((root / "e_tlt" / "results.json").read_text())
    onnx_report = json.loads((root / "e_onnx" / "results.json").read_text())
    assert onnx_report["confusion_matrix"] == tlt_report["confusion_matrix"]
    assert abs(onnx_report["loss"] - tlt_report["loss"]) < 1e-4
    assert tlt_eval.returncode == onnx_eval.returncode == 0


def test_prune_with_bn_criterion_and_refit_on_images(workflow, tmp_path, taoctl):
    root, data, spec, run, _ = workflow
    pruned = tmp_path / "refit.tlt"
    result = taoctl("classification", "prune", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                    "-o", str(pruned), "-pth", "0.8", "-pg", "4", "-nf", "4", "--criterion", "L2_bn",
                    "--cal_image_dir", str(data / "train"), "--cal_images", "8", check=True)
    assert "Refit " in result.stdout and "on 8 images" in result.stdout
    from taoctl.engine import modelfile

    record = modelfile.load_model(pruned, "secret").manifest["pruning"]
    assert record["criterion"] == "L2_bn" and record["calibration_images"] == 8
    missing = taoctl("classification", "prune", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                     "-o", str(tmp_path / "x.tlt"), "--cal_image_dir", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 2 and "--cal_image_dir" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "x.tlt").exists()
    head = tmp_path / "head.tlt"
    result = taoctl("classification", "prune", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                    "-o", str(head), "-pth", "0.8", "-pg", "4", "-nf", "4", "--criterion", "L2_bn",
                    "--cal_image_dir", str(data / "train"), "--classifier_input_ratio", "0.25", check=True)
    assert "Pruned the classifier's inputs" in result.stdout
    manifest = modelfile.load_model(head, "secret").manifest
    assert manifest["pruning"]["classifier_input_ratio"] == 0.25
    assert manifest["pruning"]["params_after"] < record["params_after"]
    taoctl("classification", "evaluate", "-e", str(spec), "-m", str(head), "-k", "secret", "-r", str(tmp_path / "e"),
           check=True)
    no_images = taoctl("classification", "prune", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                       "-o", str(tmp_path / "y.tlt"), "--classifier_input_ratio", "0.5", check=False)
    assert no_images.returncode == 2 and "pass --cal_image_dir" in no_images.stderr


def test_calibration_tensorfile_feeds_int8_export(workflow, tmp_path, taoctl):
    root, data, spec, run, _ = workflow
    cal = tmp_path / "cal.npy"
    made = taoctl("classification", "calibration_tensorfile", "-e", str(spec), "-o", str(cal), "-m", "4", check=True)
    assert "broken.jpg" in made.stdout  # the corrupt file is named, not fatal
    images = np.load(cal)
    # 4 batches of batch_size_per_gpu 8 ask for more than the 31 training files: all but the broken one
    assert images.dtype == np.uint8 and images.shape == (30, 3, 32, 32)
    assert not list(tmp_path.glob(".*tmp*"))
    onnx_path = tmp_path / "int8.onnx"
    exported = taoctl("classification", "export", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                      "-o", str(onnx_path), "--data_type", "int8", "--cal_data_file", str(cal), "--batches", "2",
                      check=True)
    assert f"Read 30 calibration images from {cal}" in exported.stdout and "Calibrating on 16 images" in exported.stdout
    assert onnx_path.exists() and "top-1 agreement" in exported.stdout
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3, 16, 16), np.uint8))
    bad = taoctl("classification", "export", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                 "-o", str(tmp_path / "x.onnx"), "--data_type", "int8", "--cal_data_file", str(wrong), check=False)
    assert bad.returncode == 2 and "--cal_data_file" in bad.stderr and "3 x 32 x 32" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.onnx").exists()
    garbage = tmp_path / "garbage.npy"
    garbage.write_text("not numpy")
    bad = taoctl("classification", "export", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                 "-o", str(tmp_path / "x.onnx"), "--data_type", "int8", "--cal_data_file", str(garbage), check=False)
    assert bad.returncode == 2 and "not a .npy calibration file" in bad.stderr and "pickle" not in bad.stderr


def test_dry_runs_check_the_paths_they_would_use(workflow, tmp_path, taoctl):
    root, data, spec, run, _ = workflow
    model = str(run / "weights" / "resnet_002.tlt")
    ok = taoctl("classification", "evaluate", "-e", str(spec), "-m", model, "--dry-run", check=True)
    assert "Dry run OK" in ok.stdout
    missing = taoctl("classification", "evaluate", "-e", str(spec), "-m", str(tmp_path / "gone.tlt"), "--dry-run",
                     check=False)
    assert missing.returncode == 2 and "model: " in missing.stderr and "gone.tlt does not exist" in missing.stderr
    no_classmap = taoctl("classification", "inference", "-e", str(spec), "-m", model, "-cm", str(tmp_path / "cm.json"),
                         "-d", str(data / "val"), "--dry-run", check=False)
    assert no_classmap.returncode == 2 and "-cm: " in no_classmap.stderr and "Traceback" not in no_classmap.stderr
    hub_spec = tmp_path / "hub.txt"
    hub_spec.write_text(SPEC.format(data=data, pretrained='pretrained_model_path: "torchvision:resnet18"', epochs=1))
    assert "Dry run OK" in taoctl("classification", "train", "-e", str(hub_spec), "-r", str(tmp_path / "r"),
                                  "--dry-run", check=True).stdout


def test_user_errors_are_one_line(workflow, tmp_path, taoctl):
    root, data, spec, run, _ = workflow
    bad_spec = tmp_path / "bad.txt"
    bad_spec.write_text(SPEC.format(data=tmp_path / "missing", pretrained="", epochs=1))
    result = taoctl("classification", "train", "-e", str(bad_spec), "-r", str(tmp_path / "r"), check=False)
    assert result.returncode == 2 and "not a folder" in result.stderr and "Traceback" not in result.stderr
    result = taoctl("classification", "prune", "-m", str(run / "weights" / "resnet_002.tlt"), "-k", "secret",
                    "-o", str(tmp_path / "p.tlt"), "-el", "layer_that_is_not_there", check=False)
    assert result.returncode == 2 and "no layer named" in result.stderr
    strict = taoctl("classification", "train", "-e", str(spec), "-r", str(tmp_path / "strict"), "--strict",
                    check=False)
    assert strict.returncode == 2 and "broken.jpg" in strict.stderr


def test_model_parallelism_splits_on_gpus_and_says_why_not_otherwise(workflow, tmp_path, taoctl):
    import torch

    root, data, spec, run, _ = workflow
    split = tmp_path / "split.txt"
    split.write_text(SPEC.format(data=data, pretrained="model_parallelism: 0.5 model_parallelism: 0.5", epochs=1))
    result = taoctl("classification", "train", "-e", str(split), "-r", str(tmp_path / "split"), check=False)
    if torch.cuda.device_count() >= 2:
        assert result.returncode == 0, result.stderr
        assert "Model parallelism: cuda:0: conv1" in result.stdout and "; cuda:1: " in result.stdout
    else:
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "train_config.model_parallelism: splitting the model across 2 GPUs needs 2 CUDA device(s)" \
            in result.stderr
        # A failure at startup leaves its FAILURE line and nothing else (no claim on the dir).
        assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["status.json"]
        assert '"FAILURE"' in (tmp_path / "split" / "status.json").read_text()
    zero = tmp_path / "zero.txt"
    zero.write_text(SPEC.format(data=data, pretrained="model_parallelism: 1 model_parallelism: 0", epochs=1))
    result = taoctl("classification", "train", "-e", str(zero), "-r", str(tmp_path / "zero"), check=False)
    assert result.returncode == 2 and "train_config.model_parallelism: the fractions must all be > 0" in result.stderr
    whole = tmp_path / "whole.txt"
    whole.write_text(SPEC.format(data=data, pretrained="model_parallelism: 1.0", epochs=1))
    taoctl("classification", "train", "-e", str(whole), "-r", str(tmp_path / "whole"), check=True)  # one part: no split
    assert (tmp_path / "whole" / "weights" / "resnet_001.tlt").exists()
