"""token_classification through the real `taoctl` command, and its word/sub-token alignment.

The CLI pipeline (dataset_convert from CoNLL columns, train, evaluate, infer, export, evaluate the
ONNX) runs on a small generated NER set with the shipped MiniLM cut to one layer; it checks the
plumbing. Entity F1 on WNUT-17 is the slow test's and the README's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ONE_LAYER

from taoctl.errors import TaoctlError
from taoctl.tasks.nlp_common import encoder as lm
from taoctl.engine import modelfile
from taoctl.tasks.nlp_common.words import (IGNORE, batch_word_predictions, best_sequence, entity_report,
                                           follows_iob2, iob2_constraints, read_word_files, tokenize_words,
                                           word_label_rows, word_predictions)
from taoctl.tasks.token_classification.task import markup, split_long

TASK = "token_classification"
PEOPLE = ("ada", "tom", "anna", "li")
PLACES = (("new", "york"), ("paris",), ("delhi",), ("san", "jose"))


def _conll(path, count: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        lines += [f"{person} B-PER", "moved O", "to O", f"{place[0]} B-LOC"] + [f"{w} I-LOC" for w in place[1:]]
        lines += [". O", ""]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("ner")
    (root / "raw").mkdir()
    _conll(root / "raw" / "train.txt", 40, 0)
    _conll(root / "raw" / "dev.txt", 12, 1)
    specs = root / "specs"
    taoctl(TASK, "download_specs", "-o", specs, check=True)
    run = taoctl(TASK, "dataset_convert", "-e", specs / "dataset_convert.yaml", f"source_data_dir={root / 'raw'}",
                 f"target_data_dir={root / 'data'}", check=True)
    assert "40 sentences" in run.stdout
    return root, root / "data", specs


def test_dataset_convert_writes_nemo_files_and_the_tag_map(converted):
    _, data, _ = converted
    assert (data / "label_ids.csv").read_text().split() == ["O", "B-LOC", "B-PER", "I-LOC"]
    first_text = (data / "text_train.txt").read_text().splitlines()[0].split()
    first_labels = (data / "labels_train.txt").read_text().splitlines()[0].split()
    assert len(first_text) == len(first_labels) and first_labels[0] == "B-PER"


def test_train_evaluate_infer_export_and_the_onnx_agrees(converted, taoctl):
    root, data, specs = converted
    overrides = [f"data_dir={data}", "training_ds.text_file=text_train.txt", "training_ds.labels_file=labels_train.txt",
                 "validation_ds.text_file=text_dev.txt", "validation_ds.labels_file=labels_dev.txt",
                 "trainer.max_epochs=1", ONE_LAYER]
    run = taoctl(TASK, "train", "-e", specs / "train.yaml", "-r", root / "train", *overrides)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "val_f1" in run.stdout
    model = root / "train" / "checkpoints" / "trained-model.tlt"
    assert modelfile.load_model(model).manifest["labels"]["iob2"] is True  # the generated tags are IOB2
    evaluate = [f"data_dir={data}", "test_ds.text_file=text_dev.txt", "test_ds.labels_file=labels_dev.txt"]
    shown = taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", model, "-r", root / "eval", *evaluate,
                   check=True)
    assert "entity F1" in shown.stdout and "B-PER" in shown.stdout
    report = json.loads((root / "eval" / "results.json").read_text())
    assert set(report["entities"]["per_label"]) == {"LOC", "PER"}
    inferred = taoctl(TASK, "infer", "-e", specs / "infer.yaml", "-m", model, "-r", root / "infer", check=True)
    assert inferred.stdout.count("Query:") == 2
    taoctl(TASK, "export", "-m", model, "-o", root / "ner.onnx", check=True)
    taoctl(TASK, "evaluate", "-e", specs / "evaluate.yaml", "-m", root / "ner.onnx", "-r", root / "eval_onnx",
           *evaluate, check=True)
    from_onnx = json.loads((root / "eval_onnx" / "results.json").read_text())
    assert from_onnx["f1"] == report["f1"] and from_onnx["words"]["accuracy"] == report["words"]["accuracy"]


def test_a_word_without_subtokens_is_never_labelled_and_predicts_the_pad_label():
    tokenizer = lm.load_tokenizer("all-MiniLM-L6-v2")
    sentence = ["hello", "\ufe0f", "world"]
    encoding = tokenize_words(tokenizer, [sentence], 32)
    rows = word_label_rows(encoding, [[1, 2, 3]])
    labelled = [label for label in rows[0] if label != IGNORE]
    assert labelled == [1, 3]  # the variation selector has no sub-token: its label cannot be placed
    tokens = [7] * len(rows[0])
    assert word_predictions(encoding, 0, 3, tokens, pad_label=0) == [7, 0, 7]


def test_only_the_first_subtoken_of_a_word_carries_its_label():
    tokenizer = lm.load_tokenizer("all-MiniLM-L6-v2")
    encoding = tokenize_words(tokenizer, [["unbelievably", "ok"]], 32)
    rows = word_label_rows(encoding, [[4, 5]])
    pieces = len(tokenizer.tokenize("unbelievably"))
    assert pieces > 1 and rows[0][1] == 4 and rows[0][2:1 + pieces] == [IGNORE] * (pieces - 1)
    assert rows[0][0] == IGNORE and rows[0][-1] == IGNORE  # [CLS] and [SEP]
    every = word_label_rows(encoding, [[4, 5]], extra_tokens=True)  # NeMo's ignore_extra_tokens: false
    assert every[0][1:1 + pieces] == [4] * pieces and every[0][1 + pieces] == 5 and every[0][0] == IGNORE


@pytest.mark.parametrize("text, labels, message", [
    ("a b c\n", "O O\n", r"labels.txt:1: 2 labels for the 3 words of .*text.txt:1"),
    ("a b\n", "O B-XYZ\n", r"labels.txt:1: label 'B-XYZ' is not in the label map"),
    ("a\nb\n", "O\n", r"labels.txt: 1 lines, but .*text.txt has 2"),
])
def test_mismatched_word_files_name_file_and_line(tmp_path, text, labels, message):
    (tmp_path / "text.txt").write_text(text)
    (tmp_path / "labels.txt").write_text(labels)
    with pytest.raises(TaoctlError, match=message):
        read_word_files(tmp_path / "text.txt", tmp_path / "labels.txt", ["O", "B-PER"], "training_ds")


def test_long_sentences_are_cut_at_an_o_word():
    words = list("abcdefg")
    tags = ["B-X", "I-X", "O", "B-Y", "I-Y", "I-Y", "O"]
    assert split_long(words, tags, 4) == [(list("ab"), tags[:2]), (list("cdef"), tags[2:6]), (["g"], ["O"])]


def test_entity_spans_read_iob_as_conlleval():
    from taoctl.tasks.nlp_common.words import entity_spans

    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-PER"]) == {
        ("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("PER", 6, 6)}  # a stray I- starts a chunk


def test_entity_report_scores_whole_entities():
    truth = [["B-PER", "I-PER", "O", "B-LOC"]]
    predicted = [["B-PER", "O", "O", "B-LOC"]]  # the person is cut short: not a match
    report = entity_report(truth, predicted)
    assert report["per_label"]["LOC"]["f1"] == 1.0 and report["per_label"]["PER"]["f1"] == 0.0
    assert report["averages"]["micro"]["f1"] == pytest.approx(0.5)
    assert markup(["ada", "moved"], ["B-PER", "O"], "O") == "ada[B-PER] moved"


TAGS = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]


def test_iob2_is_recognised_only_when_the_training_tags_follow_it_throughout():
    ids = {tag: i for i, tag in enumerate(TAGS)}
    rows = lambda *lines: [[ids[t] for t in line.split()] for line in lines]  # noqa: E731
    assert follows_iob2(rows("B-PER I-PER O B-LOC", "O O"), TAGS)
    assert not follows_iob2(rows("O I-PER I-PER", "B-LOC"), TAGS)  # IOB1: I-X opens an entity
    assert not follows_iob2(rows("B-PER I-LOC"), TAGS)  # the type changes inside an entity
    assert not follows_iob2(rows("B-PER O B-LOC"), TAGS)  # no I- tag at all: nothing to constrain
    assert not follows_iob2([[1, 0]], ["O", ","])


def test_iob2_decoding_repairs_what_the_argmax_breaks_and_keeps_what_it_gets_right():
    start, transitions = iob2_constraints(TAGS)
    log = lambda *rows: np.log(np.array(rows, dtype=np.float64))  # noqa: E731
    # Argmax: I-PER opens the sentence (0.5 > 0.4) -> the best valid sequence is B-PER I-PER.
    opening = log([0.05, 0.01, 0.4, 0.05, 0.5], [0.1, 0.01, 0.01, 0.01, 0.9])
    assert best_sequence(opening, start, transitions) == [2, 4]
    # Argmax: B-PER I-LOC (a type change inside an entity) -> B-LOC I-LOC scores higher than B-PER O.
    switching = log([0.1, 0.35, 0.45, 0.05, 0.05], [0.3, 0.01, 0.01, 0.6, 0.1])
    assert best_sequence(switching, start, transitions) == [1, 3]
    valid = log([0.1, 0.2, 0.6, 0.05, 0.05], [0.1, 0.01, 0.01, 0.1, 0.8], [0.7, 0.1, 0.1, 0.05, 0.05])
    assert best_sequence(valid, start, transitions) == valid.argmax(-1).tolist()
    assert best_sequence(np.zeros((0, len(TAGS))), start, transitions) == []


def test_batch_predictions_are_valid_iob2_and_a_word_without_subtokens_keeps_the_pad_label():
    tokenizer = lm.load_tokenizer("all-MiniLM-L6-v2")
    batch = [["ada", "\ufe0f", "moved", "to", "new", "york"], ["paris"]]
    encoding = tokenize_words(tokenizer, batch, 32, padding=True)
    logits = np.random.default_rng(0).normal(size=(2, len(encoding["input_ids"][0]), len(TAGS)))
    decoded = batch_word_predictions(tokenizer, batch, logits, 32, 0, TAGS)
    assert [len(row) for row in decoded] == [6, 1] and decoded[0][1] == 0
    assert follows_iob2(decoded + [[TAGS.index("B-PER"), TAGS.index("I-PER")]], TAGS)
    argmax = batch_word_predictions(tokenizer, batch, logits, 32, 0)
    assert not follows_iob2(argmax + [[TAGS.index("B-PER"), TAGS.index("I-PER")]], TAGS)  # this draw needs repair
