"""question_answering through the real `taoctl` command, and its SQuAD reading, windows and scoring.

The CLI pipeline runs on a small generated SQuAD v1.1 file with the shipped MiniLM cut to one layer
(plumbing, not accuracy); XQuAD's EM/F1 are the slow test's and the README's.
"""

from __future__ import annotations

import json

import pytest
from conftest import ONE_LAYER

from taoctl.errors import TaoctlError
from taoctl.tasks.nlp_common import encoder as lm
from taoctl.tasks.question_answering.spec import QADataset
from taoctl.tasks.question_answering.task import Example, Features, read_squad, squad_scores

TASK = "question_answering"
CITIES = [("Paris", "France"), ("Rome", "Italy"), ("Lisbon", "Portugal"), ("Oslo", "Norway")]


def _squad(path, count: int) -> None:
    paragraphs = []
    for i in range(count):
        city, country = CITIES[i % len(CITIES)]
        context = f"The capital of {country} is {city}. It has many museums and a river."
        paragraphs.append({"context": context, "qas": [
            {"id": f"q{i}", "question": f"What is the capital of {country}?",
             "answers": [{"text": city, "answer_start": context.index(city)}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}, indent=1))


def test_squad_scores_use_squads_normalisation():
    examples = [Example("a", "q", "c", [("the Eiffel Tower", 0)]), Example("b", "q", "c", [("Rome", 0), ("Roma", 0)])]
    scores = squad_scores({"a": "Eiffel tower!", "b": "in Roma"}, examples)
    assert scores["exact_match"] == 50.0 and scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_an_answer_not_at_its_answer_start_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    _squad(path, 2)
    data = json.loads(path.read_text())
    data["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] = 3
    path.write_text(json.dumps(data, indent=1))
    line = next(n for n, text in enumerate(path.read_text().splitlines(), start=1) if '"q1"' in text)
    with pytest.raises(TaoctlError, match=rf"bad.json:{line}: question q1: answer 'Rome' is not the context's text "
                                          rf"at answer_start 3"):
        read_squad(path, "training_ds.file")


def test_broken_json_is_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"title": }\n]}')
    with pytest.raises(TaoctlError, match=r"bad.json:2:13: not JSON"):
        read_squad(path, "training_ds.file")


def test_a_stride_wider_than_the_window_is_refused_at_its_line(tmp_path, taoctl):
    spec = tmp_path / "train.yaml"
    spec.write_text("training_ds:\n  file: x.json\nmodel:\n  dataset:\n    max_seq_length: 64\n"
                    "    doc_stride: 128\n")
    run = taoctl(TASK, "train", "-e", spec, "-r", tmp_path / "r")
    assert run.returncode == 2 and "train.yaml:6:17: model.dataset.doc_stride must be below" in run.stderr


def test_long_contexts_are_windowed_and_only_the_window_holding_the_answer_points_at_it():
    tokenizer = lm.load_tokenizer("all-MiniLM-L6-v2")
    context = " ".join(f"word{i}" for i in range(150)) + " The answer is Zanzibar. " + " ".join(["tail"] * 50)
    example = Example("q", "Where is it?", context, [("Zanzibar", context.index("Zanzibar"))])
    dataset = QADataset(max_seq_length=64, doc_stride=32)
    features = Features(tokenizer, [example], dataset, train=True)
    assert len(features.inputs) > 3
    holding = [i for i, (start, _) in enumerate(features.positions) if start > 0]
    assert holding
    for i in holding:
        start, end = features.positions[i]
        offsets = features.offsets[i]
        assert context[offsets[start][0]:offsets[end][1]] == "Zanzibar"


def test_train_evaluate_infer_export_and_the_onnx_agrees(tmp_path, taoctl):
    _squad(tmp_path / "train.json", 24)
    _squad(tmp_path / "dev.json", 8)
    specs = tmp_path / "specs"
    taoctl(TASK, "download_specs", "-o", specs, check=True)
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", tmp_path / "train",
                 f"training_ds.file={tmp_path / 'train.json'}", f"validation_ds.file={tmp_path / 'dev.json'}",
                 "trainer.max_epochs=1", "model.dataset.max_seq_length=64", "model.dataset.doc_stride=16",
                 "model.dataset.max_query_length=16", ONE_LAYER)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "val_exact_match" in run.stdout
    model = tmp_path / "train" / "checkpoints" / "trained-model.tlt"
    taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", model, "-r", tmp_path / "eval",
           f"test_ds.file={tmp_path / 'dev.json'}", check=True)
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["total"] == 8
    inferred = taoctl(TASK, "infer", "-e", specs / "infer.yaml", "-m", model, "-r", tmp_path / "infer",
                      f"infer_ds.file={tmp_path / 'dev.json'}", check=True)
    assert inferred.stdout.count("Question:") == 8 and inferred.stdout.count("Answer:") == 8
    predictions = json.loads((tmp_path / "infer" / "prediction.txt").read_text())
    nbest = json.loads((tmp_path / "infer" / "nbest.txt").read_text())
    assert set(predictions) == set(nbest) == {f"q{i}" for i in range(8)}
    assert {"text", "probability", "start_logit", "end_logit"} <= set(nbest["q0"][0])
    taoctl(TASK, "export", "-m", model, "-o", tmp_path / "qa.onnx", check=True)
    taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", tmp_path / "qa.onnx", "-r", tmp_path / "eval_onnx",
           f"test_ds.file={tmp_path / 'dev.json'}", check=True)
    from_onnx = json.loads((tmp_path / "eval_onnx" / "results.json").read_text())
    assert (from_onnx["exact_match"], from_onnx["f1"]) == (report["exact_match"], report["f1"])
