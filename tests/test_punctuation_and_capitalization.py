"""punctuation_and_capitalization through the real `taoctl` command, and its label scheme.

The CLI pipeline (dataset_convert from raw text, train, evaluate, infer, export, evaluate the ONNX)
runs on generated prose with the shipped MiniLM cut to one layer (plumbing, not accuracy); the
Gutenberg figures are the slow test's and the README's.
"""

from __future__ import annotations

import json
import random

import pytest
from conftest import ONE_LAYER

from taoctl.tasks.punctuation_and_capitalization.task import convert_line, pieces, windows

TASK = "punctuation_and_capitalization"


def test_taos_example_gets_taos_labels():
    assert convert_line("Hi, can you call Tom?") == [(["hi", "can", "you", "call", "tom"],
                                                      [",U", "OO", "OO", "OO", "?U"])]


def test_other_marks_are_deleted_hyphens_split_and_quotes_stripped():
    sentences = convert_line('"Well--twenty-one years," said Mr. Knightley; "isn\'t it ?"')
    words = [w for s in sentences for w in s[0]]
    labels = [l for s in sentences for l in s[1]]
    assert words == ["well", "twenty", "one", "years", "said", "mr", "knightley", "isn't", "it"]
    assert labels == ["OU", "OO", "OO", ",O", "OO", ".U", "OU", "OO", "?O"]


def test_mark_aliases_label_other_marks_instead_of_deleting_them():
    aliases = {"!": ".", ";": ",", ":": ","}
    line = "Oh! she said; then: Emma, come!"
    assert [l for s in convert_line(line) for l in s[1]] == ["OU", "OO", "OO", "OO", ",U", "OO"]
    sentences = convert_line(line, aliases)
    assert [l for s in sentences for l in s[1]] == [".U", "OO", ",O", ",O", ",U", ".O"]
    assert [s[0] for s in sentences] == [["oh"], ["she", "said", "then", "emma", "come"]]


def test_windows_keep_whole_sentences_within_the_word_limit():
    sentences = convert_line("A b. C d e. F g h i j k.")
    lines = windows(sentences, 5)
    assert [w for w, _ in lines] == [["a", "b", "c", "d", "e"], ["f", "g", "h", "i", "j"], ["k"]]
    assert windows(sentences, -1)[0][0] == ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
    assert pieces(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("pc")
    (root / "raw").mkdir()
    rng = random.Random(0)
    names = ["Emma", "Harriet", "Mr. Knightley"]
    for split, count in (("train", 60), ("dev", 15)):
        paragraphs = []
        for _ in range(count):
            name = rng.choice(names)
            paragraphs.append(f"{name} walked to the village, and then home. Did she see the vicar? "
                              f"She did not, said {rng.choice(names)}.")
        (root / "raw" / f"{split}.txt").write_text("\n".join(paragraphs) + "\n")
    specs = root / "specs"
    taoctl(TASK, "download_specs", "-o", specs, check=True)
    run = taoctl(TASK, "dataset_convert", "-e", specs / "dataset_convert.yaml", f"source_data_dir={root / 'raw'}",
                 f"target_data_dir={root / 'data'}", "max_words_per_line=12", check=True)
    assert "train.txt" in run.stdout
    return root, root / "data", specs


def test_dataset_convert_writes_aligned_text_and_labels(converted):
    _, data, _ = converted
    texts = (data / "text_train.txt").read_text().splitlines()
    labels = (data / "labels_train.txt").read_text().splitlines()
    assert len(texts) == len(labels) > 60
    assert all(len(t.split()) == len(l.split()) <= 12 for t, l in zip(texts, labels))
    assert texts[0] == texts[0].lower() and "," not in texts[0]


def test_train_evaluate_infer_export_and_the_onnx_agrees(converted, taoctl):
    root, data, specs = converted
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", root / "train", f"data_dir={data}",
                 "trainer.max_epochs=1", ONE_LAYER)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "val_punct_f1_comma" in run.stdout and "val_capit_f1" in run.stdout
    model = root / "train" / "checkpoints" / "trained-model.tlt"
    shown = taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", model, "-r", root / "eval",
                   f"data_dir={data}", check=True)
    assert "Punctuation report" in shown.stdout and "Capitalization report" in shown.stdout
    report = json.loads((root / "eval" / "results.json").read_text())
    assert set(report["punctuation"]["per_label"]) == {"O", ",", ".", "?"}
    inferred = taoctl(TASK, "infer", "-e", specs / "infer.yaml", "-m", model, "-r", root / "infer", check=True)
    assert inferred.stdout.count("Result:") == 2
    taoctl(TASK, "export", "-m", model, "-o", root / "pc.onnx", check=True)
    taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", root / "pc.onnx", "-r", root / "eval_onnx",
           f"data_dir={data}", check=True)
    from_onnx = json.loads((root / "eval_onnx" / "results.json").read_text())
    assert from_onnx["summary"] == report["summary"]


def test_a_mark_alias_outside_the_scheme_is_refused(converted, tmp_path, taoctl):
    root, _, specs = converted
    run = taoctl(TASK, "dataset_convert", "-e", specs / "dataset_convert.yaml", f"source_data_dir={root / 'raw'}",
                 f"target_data_dir={tmp_path / 'out'}", "mark_aliases={'!': '!'}")
    assert run.returncode != 0 and "mark_aliases: {'!': '!'}" in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_label_outside_the_scheme_is_named(converted, tmp_path, taoctl):
    root, data, specs = converted
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "text_train.txt").write_text("hello there\n")
    (bad / "labels_train.txt").write_text("OU !O\n")
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", tmp_path / "r", f"data_dir={bad}",
                 "validation_ds.text_file=null", ONE_LAYER)
    assert run.returncode == 2 and "labels_train.txt:1: label '!O' is not in the label map" in run.stderr
