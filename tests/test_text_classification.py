"""text_classification through the real `taoctl` command: TAO 3.x's subtasks, flags, overrides and files.

The pipeline runs on the generated sample messages with the shipped MiniLM cut to one layer
(``model.language_model.config={num_hidden_layers: 1}``: random weights, seconds per step), so it
checks the plumbing, not accuracy; the accuracy on sms_spam is the slow test's and bench/'s.
"""

from __future__ import annotations

import json
import zipfile

import pytest
from conftest import ONE_LAYER, text_classification_overrides

from taoctl.errors import TaoctlError
from taoctl.tasks.nlp_common.data import read_tsv

TASK = "text_classification"
KEY = ("-k", "tlt_encode")  # NGC's key, as TAO's notebooks pass it: the model files are encrypted with it


@pytest.fixture(scope="module")
def sample(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("tc")
    taoctl.run_module("taoctl.engine.data.samples", "--out", root / "data", check=True)
    specs = root / "specs"
    taoctl(TASK, "download_specs", "-o", specs, check=True)
    return root, root / "data" / "text_classification", specs


@pytest.fixture(scope="module")
def trained(sample, taoctl):
    root, data, specs = sample
    results = root / "train"
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", results, "-g", "1", *KEY, *text_classification_overrides(data))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return results / "checkpoints" / "trained-model.tlt", run


def test_download_specs_writes_every_subtasks_spec(sample):
    _, _, specs = sample
    assert sorted(p.name for p in specs.iterdir()) == ["evaluate.yaml", "export.yaml", "finetune.yaml",
                                                        "infer.yaml", "train.yaml"]


def test_train_writes_taos_checkpoint_and_status(trained):
    model, run = trained
    assert model.is_file()
    status = [json.loads(line) for line in (model.parent.parent / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "SUCCESS"
    assert "val_accuracy" in run.stdout and "Total params" in run.stdout


def test_evaluate_infer_export_and_the_onnx_agrees(sample, trained, taoctl):
    root, data, specs = sample
    model, _ = trained
    test_file = f"test_ds.file_path={data / 'dev.tsv'}"
    evaluated = taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", model, *KEY, "-r", root / "eval", test_file,
                       check=True)
    assert "precision" in evaluated.stdout and "macro avg" in evaluated.stdout
    report = json.loads((root / "eval" / "results.json").read_text())
    assert set(report["per_label"]) == {"ham", "spam"} and report["examples"] == 48

    inferred = taoctl(TASK, "infer", "-e", specs / "infer.yaml", "-m", model, *KEY, "-r", root / "infer", check=True)
    assert inferred.stdout.count("Query:") == 2
    assert len(json.loads((root / "infer" / "infer_results.json").read_text())) == 2

    exported = taoctl(TASK, "export", "-e", specs / "export.yaml", "-m", model, *KEY, "-r", root / "export",
                      check=True)
    assert "ONNX fp32 vs PyTorch on 16 sentences" in exported.stdout
    # The output named once, never the temporary model.onnx packed into it.
    assert [line for line in exported.stdout.splitlines() if str(root) in line] == [
        f"Wrote {root / 'export' / 'exported-model.riva'}: .riva is NVIDIA's own format; taoctl's is a zip of "
        f"model.onnx, the tokenizer files and the label maps (Riva cannot load it)"]
    with zipfile.ZipFile(root / "export" / "exported-model.riva") as archive:
        names = set(archive.namelist())
    assert {"model.onnx", "labels.json", "tokenizer/tokenizer.json"} <= names

    onnx_file = root / "export" / "model.onnx"
    taoctl(TASK, "export", "-m", model, *KEY, "-o", onnx_file, check=True)
    taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", onnx_file, "-r", root / "eval_onnx", test_file,
           check=True)
    from_onnx = json.loads((root / "eval_onnx" / "results.json").read_text())
    assert from_onnx["accuracy"] == report["accuracy"] and abs(from_onnx["loss"] - report["loss"]) < 1e-4

    int8 = taoctl(TASK, "export", "-m", model, *KEY, "-o", root / "export" / "int8.onnx", "--data_type", "int8",
                  check=True)
    assert "int8 (dynamic) vs fp32" in int8.stdout and "agrees on" in int8.stdout


def test_a_model_file_without_its_key_is_one_line(sample, trained, taoctl, tmp_path):
    _, data, specs = sample
    model, _ = trained
    run = taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", model, "-r", tmp_path / "eval",
                 f"test_ds.file_path={data / 'dev.tsv'}")
    assert run.returncode == 2 and "wrong key" in run.stderr and "Traceback" not in run.stderr


def test_finetune_continues_from_the_trained_model(sample, trained, taoctl):
    root, data, specs = sample
    model, _ = trained
    results = root / "finetune"
    run = taoctl(TASK, "finetune", "-e", specs / "finetune.yaml", "-m", model, *KEY, "-r", results,
                 f"finetuning_ds.file_path={data / 'dev.tsv'}", "trainer.max_epochs=1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (results / "checkpoints" / "finetuned-model.tlt").is_file()


@pytest.mark.parametrize("line, message", [
    ("no tab here 1", "no TAB between the text and its label"),
    ("some text\tspam", "label 'spam' is not an integer"),
    ("some text\t7", "label 7 is out of range for 2 classes"),
    ("\t1", "empty text"),
])
def test_malformed_tsv_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.tsv"
    path.write_text(f"good line\t0\n{line}\n")
    with pytest.raises(TaoctlError, match=f"{path}:2: {message}"):
        read_tsv(path, 2, "training_ds.file_path")


def test_header_line_is_skipped_and_empty_file_refused(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nhello there\t1\n")
    assert read_tsv(path, 2, "training_ds.file_path") == (["hello there"], [1])
    path.write_text("\n\n")
    with pytest.raises(TaoctlError, match="file is empty"):
        read_tsv(path, 2, "training_ds.file_path")


def test_bad_training_data_fails_before_writing_anything(sample, tmp_path, taoctl):
    _, data, specs = sample
    bad = tmp_path / "bad.tsv"
    bad.write_text("fine\t0\nbroken line without a label\n")
    results = tmp_path / "results"
    overrides = [o for o in text_classification_overrides(data) if not o.startswith("training_ds.file_path")]
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", results, f"training_ds.file_path={bad}",
                 *overrides)
    assert run.returncode == 2 and f"{bad}:2: no TAB" in run.stderr and "Traceback" not in run.stderr
    assert not (results / "checkpoints").exists() and not (results / "weights").exists()


def test_required_value_left_as_question_marks_is_named(sample, tmp_path, taoctl):
    _, data, specs = sample
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", tmp_path / "r",
                 f"validation_ds.file_path={data / 'dev.tsv'}", "model.dataset.num_classes=2")
    assert run.returncode == 2 and "training_ds.file_path" in run.stderr and "Traceback" not in run.stderr


def test_unknown_override_key_gets_did_you_mean(sample, tmp_path, taoctl):
    _, data, specs = sample
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", tmp_path / "r", "trainer.max_epoch=3",
                 *text_classification_overrides(data))
    assert run.returncode == 2 and 'did you mean "max_epochs"' in run.stderr


def test_hub_name_offline_is_one_line_naming_the_shipped_model(sample, tmp_path, taoctl):
    _, data, specs = sample
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", tmp_path / "r",
                 *[o for o in text_classification_overrides(data) if o != ONE_LAYER],
                 "model.language_model.pretrained_model_name=bert-base-uncased",
                 env={"HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2, run.stderr
    assert "bert-base-uncased" in run.stderr and "all-MiniLM-L6-v2" in run.stderr and "Traceback" not in run.stderr
