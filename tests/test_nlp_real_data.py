"""The conversational NLP tasks on their real datasets (../shared/data), through the real `taoctl` command, with
the recipes the README's figures come from; each asserts issue 15's target. Slow: 10-90 minutes each on a
2-core CPU (`make test-slow`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECS = Path(__file__).resolve().parents[1] / "src" / "taoctl" / "tasks"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(4 * 3600)]


def _needs(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} is not here")
    return path


def _spec(task: str, name: str) -> Path:
    return SPECS / task / "specs" / name


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_text_classification_sms_spam(tmp_path, taoctl):
    data = _needs("sms_spam")
    task = "text_classification"
    taoctl(task, "train", "-e", _spec(task, "train.yaml"), "-r", tmp_path / "train",
           f"training_ds.file_path={data / 'train.tsv'}", f"validation_ds.file_path={data / 'dev.tsv'}",
           "model.dataset.num_classes=2", f"model.class_labels.class_labels_file={data / 'labels.txt'}",
           "trainer.max_epochs=4", "optim.lr=1e-4", check=True, timeout=3 * 3600)
    model = tmp_path / "train" / "checkpoints" / "trained-model.tlt"
    taoctl(task, "evaluate", "-e", _spec(task, "evaluate.yaml"), "-m", model, "-r", tmp_path / "eval",
           f"test_ds.file_path={data / 'dev.tsv'}", check=True)
    report = _results(tmp_path / "eval")
    assert report["accuracy"] >= 0.990 and report["per_label"]["spam"]["f1"] >= 0.96
    taoctl(task, "export", "-m", model, "-o", tmp_path / "tc.onnx", check=True)
    taoctl(task, "evaluate", "-e", _spec(task, "evaluate.yaml"), "-m", tmp_path / "tc.onnx", "-r",
           tmp_path / "eval_onnx", f"test_ds.file_path={data / 'dev.tsv'}", check=True)
    assert _results(tmp_path / "eval_onnx")["accuracy"] == report["accuracy"]


def test_token_classification_wnut17(tmp_path, taoctl):
    data = _needs("wnut17")
    task = "token_classification"
    taoctl(task, "dataset_convert", "-e", _spec(task, "dataset_convert.yaml"), f"source_data_dir={data / 'raw'}",
           f"target_data_dir={tmp_path / 'data'}",
           "list_of_file_names=[wnut17train.conll, emerging.dev.conll, emerging.test.annotated]",
           "train_file_name=wnut17train.conll", check=True)
    splits = ["training_ds.text_file=text_wnut17train.conll", "training_ds.labels_file=labels_wnut17train.conll",
              "validation_ds.text_file=text_emerging.dev.conll", "validation_ds.labels_file=labels_emerging.dev.conll"]
    taoctl(task, "train", "-e", _spec(task, "train.yaml"), "-r", tmp_path / "train", f"data_dir={tmp_path / 'data'}",
           *splits, check=True, timeout=3 * 3600)
    taoctl(task, "evaluate", "-e", _spec(task, "evaluate.yaml"), "-m",
           tmp_path / "train" / "checkpoints" / "trained-model.tlt", "-r", tmp_path / "eval",
           f"data_dir={tmp_path / 'data'}", "test_ds.text_file=text_emerging.test.annotated",
           "test_ds.labels_file=labels_emerging.test.annotated", check=True)
    assert _results(tmp_path / "eval")["f1"] >= 0.45


def test_intent_slot_classification_snips(tmp_path, taoctl):
    data = _needs("snips")
    task = "intent_slot_classification"
    taoctl(task, "train", "-e", _spec(task, "train.yaml"), "-r", tmp_path / "train", f"data_dir={data}",
           "validation_ds.prefix=null", check=True, timeout=3 * 3600)
    taoctl(task, "evaluate", "-e", _spec(task, "evaluate.yaml"), "-m",
           tmp_path / "train" / "checkpoints" / "trained-model.tlt", "-r", tmp_path / "eval", f"data_dir={data}",
           check=True)
    report = _results(tmp_path / "eval")
    assert report["intent_accuracy"] >= 0.985 and report["slot_f1"] >= 0.94


def test_punctuation_and_capitalization_gutenberg(tmp_path, taoctl):
    data = _needs("gutenberg_prose")
    task = "punctuation_and_capitalization"
    taoctl(task, "dataset_convert", "-e", _spec(task, "dataset_convert.yaml"), f"source_data_dir={data}",
           f"target_data_dir={tmp_path / 'data'}", check=True)
    taoctl(task, "train", "-e", _spec(task, "train.yaml"), "-r", tmp_path / "train", f"data_dir={tmp_path / 'data'}",
           "validation_ds.text_file=null", check=True, timeout=4 * 3600)
    taoctl(task, "evaluate", "-e", _spec(task, "evaluate.yaml"), "-m",
           tmp_path / "train" / "checkpoints" / "trained-model.tlt", "-r", tmp_path / "eval",
           f"data_dir={tmp_path / 'data'}", check=True)
    summary = _results(tmp_path / "eval")["summary"]
    assert summary["punct_f1_period"] >= 0.70 and summary["punct_f1_comma"] >= 0.62
    assert summary["punct_f1_question"] >= 0.50 and summary["capit_f1"] >= 0.83


def test_question_answering_xquad(tmp_path, taoctl):
    data = _needs("xquad_en")
    task = "question_answering"
    taoctl(task, "train", "-e", _spec(task, "train.yaml"), "-r", tmp_path / "train",
           f"training_ds.file={data / 'train.json'}", check=True, timeout=3 * 3600)
    taoctl(task, "evaluate", "-e", _spec(task, "evaluate.yaml"), "-m",
           tmp_path / "train" / "checkpoints" / "trained-model.tlt", "-r", tmp_path / "eval",
           f"test_ds.file={data / 'dev.json'}", check=True)
    assert _results(tmp_path / "eval")["f1"] >= 45.0
