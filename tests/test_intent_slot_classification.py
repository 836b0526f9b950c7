"""intent_slot_classification through the real `taoctl` command, and its data checks.

The CLI pipeline runs on a small generated set in NeMo's layout with the shipped MiniLM cut to one
layer (plumbing, not accuracy); the SNIPS figures are the slow test's and the README's.
"""

from __future__ import annotations

import json
import random

import pytest
from conftest import ONE_LAYER

from taoctl.engine import modelfile
from taoctl.errors import TaoctlError
from taoctl.tasks.intent_slot_classification.task import read_queries

TASK = "intent_slot_classification"
INTENTS = ["GetWeather", "BookFlight"]
SLOTS = ["B-city", "I-city", "O"]
CITIES = (("paris",), ("new", "york"), ("rome",))


def _write_split(folder, prefix: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    queries, slot_lines = ["sentence\tlabel"], []
    for _ in range(count):
        city = rng.choice(CITIES)
        intent = rng.randrange(2)
        head = ["weather", "in"] if intent == 0 else ["fly", "me", "to"]
        words = head + list(city)
        queries.append(f"{' '.join(words)}\t{intent}")
        slot_lines.append(" ".join(["2"] * len(head) + ["0"] + ["1"] * (len(city) - 1)))
    (folder / f"{prefix}.tsv").write_text("\n".join(queries) + "\n")
    (folder / f"{prefix}_slots.tsv").write_text("\n".join(slot_lines) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("snips_like")
    (folder / "dict.intents.csv").write_text("\n".join(INTENTS) + "\n")
    (folder / "dict.slots.csv").write_text("\n".join(SLOTS) + "\n")
    _write_split(folder, "train", 40, 0)
    _write_split(folder, "test", 12, 1)
    return folder


def test_train_evaluate_infer_export_and_the_onnx_agrees(data, tmp_path, taoctl):
    specs = tmp_path / "specs"
    taoctl(TASK, "download_specs", "-o", specs, check=True)
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", tmp_path / "train", f"data_dir={data}",
                 "trainer.max_epochs=1", ONE_LAYER)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "val_intent_accuracy" in run.stdout and "val_slot_f1" in run.stdout
    model = tmp_path / "train" / "checkpoints" / "trained-model.tlt"
    assert modelfile.load_model(model).manifest["labels"]["iob2"] is True  # slots decoded as IOB2
    shown = taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", model, "-r", tmp_path / "eval",
                   f"data_dir={data}", check=True)
    assert "Intent report" in shown.stdout and "Slot report" in shown.stdout
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(report["intents"]["per_label"]) == set(INTENTS) and report["queries"] == 12
    inferred = taoctl(TASK, "infer", "-e", specs / "infer.yaml", "-m", model, "-r", tmp_path / "infer", check=True)
    assert inferred.stdout.count("Predicted intent:") == 2
    taoctl(TASK, "export", "-m", model, "-o", tmp_path / "joint.onnx", check=True)
    taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", tmp_path / "joint.onnx", "-r",
           tmp_path / "eval_onnx", f"data_dir={data}", check=True)
    from_onnx = json.loads((tmp_path / "eval_onnx" / "results.json").read_text())
    assert from_onnx["intent_accuracy"] == report["intent_accuracy"] and from_onnx["slot_f1"] == report["slot_f1"]


@pytest.mark.parametrize("slots, message", [
    ("2 2 0\n", r"test_slots.tsv:1: 3 slot ids for the 4 words"),
    ("2 2 x 0\n", r"test_slots.tsv:1: slot ids must be integers"),
    ("2 2 9 0\n", r"test_slots.tsv:1: slot id 9 is out of range for 3 slots"),
    ("2 2 2 0\n2 0\n", r"test_slots.tsv: 2 slot lines, but .*test.tsv has 1 queries"),
])
def test_bad_slot_files_name_file_and_line(tmp_path, slots, message):
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nfly me to paris\t1\n")
    (tmp_path / "test_slots.tsv").write_text(slots)
    with pytest.raises(TaoctlError, match=message):
        read_queries(tmp_path / "test.tsv", tmp_path / "test_slots.tsv", 2, 3)


def test_queries_read_with_their_header_skipped(tmp_path):
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nfly me to paris\t1\n")
    (tmp_path / "test_slots.tsv").write_text("2 2 2 0\n")
    assert read_queries(tmp_path / "test.tsv", tmp_path / "test_slots.tsv", 2, 3) == (
        [["fly", "me", "to", "paris"]], [1], [[2, 2, 2, 0]])
