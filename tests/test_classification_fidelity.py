"""classification as TAO's notebooks expect it: file names, keys, tensor names, files and console
lines that TAO users' scripts read (issue 17), through the real `taoctl` command."""

from __future__ import annotations

import csv
import json
import re
import shutil

import onnx
import pytest
from conftest import make_colour_images

from taoctl.engine import modelfile
from taoctl.engine.resultsdir import spec_fingerprint
from taoctl.launcher import entrypoint

SPEC = """
model_config {{
  arch: "resnet"
  n_layers: 10
  input_image_size: "3,32,32"
}}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  {pretrained}
  optimizer {{ sgd {{ lr: 0.01 momentum: 0.9 }} }}
  lr_config {{ step {{ learning_rate: 0.01 step_size: 10 gamma: 0.5 }} }}
  reg_config {{ type: "L2" scope: "Conv2D,Dense" weight_decay: 0.00005 }}
  batch_size_per_gpu: 4
  n_epochs: 1
  n_workers: 0
  preprocess_mode: "caffe"
}}
eval_config {{
  eval_dataset_path: "{data}/val"
  model_path: "{model_path}"
  top_k: 1
  batch_size: 4
}}
"""
TAO5 = ("model", "classification_tf1")  # `taoctl model classification_tf1 <action>`, as TAO 5's notebook types it


def write_spec(path, data, pretrained: str = "", model_path: str = "") -> str:
    path.write_text(SPEC.format(data=data, pretrained=pretrained, model_path=model_path))
    return str(path)


def checkpoint(run):
    """The run's one checkpoint (its name is test_tao5_form_writes_plain_hdf5_checkpoints' business)."""
    (model,) = (run / "weights").iterdir()
    return model


@pytest.fixture(scope="module")
def tao5_run(tmp_path_factory, taoctl):
    """One TAO 5 form training run with -k (1 epoch, tiny images)."""
    root = tmp_path_factory.mktemp("fidelity")
    data = make_colour_images(root / "data", {"train": 4, "val": 2})
    spec = write_spec(root / "spec.txt", data)
    run = root / "run"
    train = taoctl(*TAO5, "train", "-e", spec, "-r", run, "-k", "nvidia_tlt", check=True)
    return root, data, spec, run, train


# ---------------------------------------------------------------- 1. file names and keys
def test_tao5_form_writes_plain_hdf5_checkpoints_that_work_without_the_key(tao5_run, taoctl):
    root, data, spec, run, _ = tao5_run
    assert [p.name for p in (run / "weights").iterdir()] == ["resnet_001.hdf5"]
    model = run / "weights" / "resnet_001.hdf5"
    assert model.read_bytes().startswith(b"PK")  # a plain archive: -k did not encrypt it
    evaluated = taoctl(*TAO5, "evaluate", "-e", spec, "-m", model, "-r", root / "eval5")
    assert evaluated.returncode == 0, evaluated.stderr
    pruned = root / "resnet_pruned.hdf5"  # the notebook's name for the pruned model
    taoctl(*TAO5, "prune", "-m", model, "-o", pruned, "-pth", "0.5", check=True)
    retrain_spec = write_spec(root / "retrain.txt", data, pretrained=f'pretrained_model_path: "{pruned}"')
    retrained = taoctl(*TAO5, "train", "-e", retrain_spec, "-r", root / "retrain")
    assert retrained.returncode == 0, retrained.stderr  # a taoctl file named .hdf5 is not taken for Keras weights
    assert (root / "retrain" / "weights" / "resnet_001.hdf5").exists()


def test_tao4_form_writes_encrypted_tlt_checkpoints(tao5_run, taoctl):
    root, data, spec, _, _ = tao5_run
    run = root / "run4"
    taoctl("classification", "train", "-e", spec, "-r", run, "-k", "nvidia_tlt", check=True)
    model = run / "weights" / "resnet_001.tlt"
    assert model.read_bytes().startswith(modelfile.MAGIC)
    unkeyed = taoctl("classification", "evaluate", "-e", spec, "-m", model)
    assert unkeyed.returncode == 2 and "pass its key with -k" in unkeyed.stderr


def test_the_launcher_and_the_engine_name_the_same_variable(monkeypatch, tmp_path):
    assert entrypoint.CLI_GROUP_ENV == modelfile.CLI_GROUP_ENV
    monkeypatch.setenv(modelfile.CLI_GROUP_ENV, "model")
    modelfile.write_archive(tmp_path / "a.hdf5", {"x": b"1"}, key="k")
    assert modelfile.checkpoint_suffix() == ".hdf5" and (tmp_path / "a.hdf5").read_bytes().startswith(b"PK")
    monkeypatch.delenv(modelfile.CLI_GROUP_ENV)
    modelfile.write_archive(tmp_path / "b.tlt", {"x": b"1"}, key="k")
    assert modelfile.checkpoint_suffix() == ".tlt" and (tmp_path / "b.tlt").read_bytes().startswith(modelfile.MAGIC)


# ---------------------------------------------------------------- 2. tensor names
def test_export_names_the_output_as_tao_does(tao5_run, taoctl):
    root, _, spec, run, _ = tao5_run
    out = root / "export"
    taoctl(*TAO5, "export", "-m", checkpoint(run), "-e", spec, "-o", out / "resnet.onnx",
           "--gen_ds_config", check=True)
    graph = onnx.load(str(out / "resnet.onnx")).graph
    assert [o.name for o in graph.output] == ["predictions/Softmax"]
    assert "output-blob-names=predictions/Softmax" in (out / "nvinfer_config.txt").read_text()


# ---------------------------------------------------------------- 3. inference files and lines
def test_inference_dir_writes_a_headerless_result_csv_into_the_folder(tao5_run, taoctl, tmp_path):
    root, data, spec, run, _ = tao5_run
    images = shutil.copytree(data / "val" / "red", tmp_path / "red")
    args = (*TAO5, "inference", "-e", spec, "-m", checkpoint(run), "-cm", run / "classmap.json")
    taoctl(*args, "-d", images, check=True)
    rows = list(csv.reader((images / "result.csv").open()))
    assert not (tmp_path / "result.csv").exists()
    assert sorted(r[0] for r in rows) == sorted(str(p) for p in images.glob("*.png"))  # no header row
    assert all(r[1] in ("red", "blue") and 0 < float(r[2]) <= 1 for r in rows)
    taoctl(*args, "-d", images, "-r", tmp_path / "out", check=True)
    assert len(list(csv.reader((tmp_path / "out" / "result.csv").open()))) == len(rows)


def test_inference_image_prints_taos_lines(tao5_run, taoctl):
    root, data, spec, run, _ = tao5_run
    one = taoctl(*TAO5, "inference", "-e", spec, "-m", checkpoint(run),
                 "-cm", run / "classmap.json", "-i", data / "val" / "blue" / "0.png", check=True)
    probabilities = re.search(r"^Current predictions: \[\[([0-9.e\- ]+)\]\]$", one.stdout, re.M)
    label = re.search(r"^Class label = (\d)$", one.stdout, re.M)
    name = re.search(r"^Class name = (\w+)$", one.stdout, re.M)
    assert probabilities and label and name, one.stdout
    scores = [float(v) for v in probabilities.group(1).split()]
    classes = json.loads((run / "classmap.json").read_text())
    assert len(scores) == 2 and scores.index(max(scores)) == int(label.group(1)) == classes[name.group(1)]


# ---------------------------------------------------------------- 4. results.json
def test_evaluate_reports_taos_key_and_lines(tao5_run, taoctl):
    root, _, spec, run, _ = tao5_run
    result = taoctl(*TAO5, "evaluate", "-e", spec, "-m", checkpoint(run), "-r", root / "eval",
                    check=True)
    report = json.loads((root / "eval" / "results.json").read_text())
    assert report["top_k_accuracy"] == report["top1_accuracy"]  # eval_config.top_k: 1; taoctl's keys stay
    assert f"Evaluation Top K accuracy: {report['top_k_accuracy']}" in result.stdout
    assert f"Evaluation Loss: {report['loss']}" in result.stdout


# ---------------------------------------------------------------- 5. info and usage
def test_info_marks_implemented_only_tasks_with_every_subtask(taoctl):
    table = taoctl("info", "--verbose", check=True).stdout.split("\n* planned subtask")[0].splitlines()
    rows = [line.split() for line in table if re.search(r"\s(implemented|partial|planned)\s", line)]
    assert rows
    for row in rows:
        state = next(word for word in row if word in ("implemented", "partial", "planned"))
        subtasks = row[row.index(state) + 1:]
        missing = [s for s in subtasks if s.endswith("*")]
        expected = "planned" if len(missing) == len(subtasks) else "partial" if missing else "implemented"
        assert state == expected, row


@pytest.mark.parametrize("group", ["model", "dataset", "deploy"])
def test_a_tao5_group_alone_prints_its_usage_once(group, taoctl):
    result = taoctl(group)
    assert result.returncode == 0 and (result.stdout + result.stderr).count("Usage:") == 1


# ---------------------------------------------------------------- 6. results dir claim
def test_setting_eval_model_path_keeps_the_results_dir(tao5_run, taoctl):
    root, data, spec, run, _ = tao5_run
    edited = write_spec(root / "spec.txt", data, model_path=str(checkpoint(run)))
    again = taoctl(*TAO5, "train", "-e", edited, "-r", run)
    assert again.returncode == 0 and "different spec" not in again.stderr, again.stderr
    assert "Resuming from epoch 1" in again.stdout
    changed = write_spec(root / "changed.txt", data, model_path="x")
    text = (root / "changed.txt").read_text().replace("batch_size_per_gpu: 4", "batch_size_per_gpu: 2")
    assert spec_fingerprint(text) != spec_fingerprint((root / "spec.txt").read_text())
    (root / "changed.txt").write_text(text)
    refused = taoctl(*TAO5, "train", "-e", changed, "-r", run)
    assert refused.returncode == 2 and "holds checkpoints of a different spec" in refused.stderr


def test_the_fingerprint_ignores_layout_comments_and_the_eval_model_path():
    base = 'model_config { arch: "resnet" }\neval_config { model_path: "a.tlt" top_k: 1 }\n'
    same = '# notebook spec\nmodel_config: {\n  arch: "resnet"\n}\neval_config <\n  top_k: 1\n  model_path: "b.hdf5"\n>\n'
    assert spec_fingerprint(base) == spec_fingerprint(same)
    assert spec_fingerprint(base) != spec_fingerprint(base.replace("top_k: 1", "top_k: 2"))
    yaml_spec = "train:\n  num_epochs: 3\nevaluate:\n  checkpoint: a.pth\n"
    assert spec_fingerprint(yaml_spec) == spec_fingerprint(yaml_spec.replace("a.pth", "b.pth"))
    assert spec_fingerprint(yaml_spec) != spec_fingerprint(yaml_spec.replace("3", "4"))


def test_the_docker_runtime_passes_the_command_form_on(monkeypatch, tmp_path):
    from taoctl.launcher import mounts, registry
    from taoctl.launcher.runtime import docker as docker_runtime

    monkeypatch.setenv(entrypoint.CLI_GROUP_ENV, "model")
    config = mounts.parse({"Mounts": [{"source": str(tmp_path), "destination": "/exp"}]}, str(tmp_path / "m.json"))
    kwargs, _ = docker_runtime.container_spec(registry.get_task("classification"), "train", [], config)
    assert kwargs["environment"][entrypoint.CLI_GROUP_ENV] == "model"
