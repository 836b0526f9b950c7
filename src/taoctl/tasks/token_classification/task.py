"""token_classification (NER): a tag per word (NeMo's TokenClassifier) on the shared NLP base.

Data: NeMo's ``text_<split>.txt`` (space-separated words a line) + ``labels_<split>.txt`` (a tag a
word) + ``label_ids.csv`` (a tag a line, line index = id). ``dataset_convert`` builds them from
CoNLL/IOB columns. Evaluation reports NeMo's per-tag table (word level) and the entity-level
precision/recall/F1 of CoNLL's scoring (conlleval's chunks), which picks the best checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taoctl.engine.cli import echo
from taoctl.engine.task import Evaluator, TrainData, Validation
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_paths, write_atomic
from taoctl.outputs import refuse_overwrites
from taoctl.tasks.nlp_common.data import limit, read_label_names, read_lines
from taoctl.tasks.nlp_common.heads import TokenClassifier
from taoctl.tasks.nlp_common.task import NLPTask
from taoctl.tasks.nlp_common.words import (batch_word_predictions, batches_by_length, follows_iob2, format_tagging,
                                           iob2_decoding, read_word_files, tagging_report, tokenize_words,
                                           word_label_rows)


class TaggingReport(Evaluator):
    """Word-level per-tag report (NeMo's) and entity-level F1 (CoNLL's) of sentences of words."""

    def __init__(self, sentences: list[list[str]], labels: list[list[int]], names: list[str], pad_label: str,
                 batch_size: int, tokenizer, max_length: int, iob2_tags: list[str] | None):
        self.sentences, self.labels, self.names, self.iob2_tags = sentences, labels, names, iob2_tags
        self.pad_id = names.index(pad_label) if pad_label in names else 0
        self.batch_size, self.tokenizer, self.max_length = batch_size, tokenizer, max_length

    def run(self, predictor):
        predicted: list[list[int]] = [[] for _ in self.sentences]
        for rows, outputs in batches_by_length(self.sentences, self.batch_size, predictor):
            batch = [self.sentences[i] for i in rows]
            words = batch_word_predictions(self.tokenizer, batch, outputs[0], self.max_length, self.pad_id,
                                           self.iob2_tags)
            for index, row in zip(rows, words):
                predicted[index] = row
        return {**tagging_report(self.labels, predicted, self.names), "sentences": len(self.sentences),
                "source": predictor.source}

    def summary(self, report):
        return {"f1": report["f1"], "word_accuracy": report["words"]["accuracy"]}

    def write(self, report, out_dir):
        echo(format_tagging(report))
        echo(f"\nentity F1 {report['f1'] * 100:.2f} on {report['sentences']} sentences; word accuracy "
             f"{report['words']['accuracy'] * 100:.2f} %")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "results.json", json.dumps(report, indent=1))
        echo(f"Wrote {out_dir / 'results.json'}")


def markup(words: list[str], tags: list[str], pad_label: str) -> str:
    """NeMo's infer output: ``word[TAG]`` for every word not tagged with the pad label."""
    return " ".join(word if tag == pad_label else f"{word}[{tag}]" for word, tag in zip(words, tags))


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """CoNLL/IOB columns: a token a line, the word first and the tag last, a blank line between sentences."""
    sentences, words, tags = [], [], []
    for number, line in enumerate(read_lines(path, "source_data_dir file"), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if len(columns) < 2:
            raise TaoctlError(f"{path}:{number}: a token line needs the word and its tag (CoNLL columns)")
        words.append(columns[0])
        tags.append(columns[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def split_long(words: list[str], tags: list[str], max_length: int) -> list[tuple[list[str], list[str]]]:
    """NeMo's max_length: a sentence longer than it is cut into pieces, each cut made at an ``O`` word."""
    pieces = []
    while max_length > 0 and len(words) > max_length:
        cut = next((i for i in range(max_length, 0, -1) if tags[i] == "O"), max_length)
        pieces.append((words[:cut], tags[:cut]))
        words, tags = words[cut:], tags[cut:]
    return pieces + [(words, tags)]


class TokenClassificationTask(NLPTask):
    name = "token_classification"
    spec_module = "taoctl.tasks.token_classification.spec"

    data_dir_fields = ("data_dir", "model.dataset.data_dir")
    data_dir_holds = "text_*.txt, labels_*.txt and label_ids.csv"

    def labels(self, run):
        spec = run.spec
        path = Path(spec.model.label_ids) if spec.model.label_ids else self.data_dir(spec) / "label_ids.csv"
        names = read_label_names(path, "model.label_ids")
        pad = spec.model.dataset.pad_label
        if pad not in names:
            raise TaoctlError(f"{path}: the pad label {pad!r} (model.dataset.pad_label) is not among its labels")
        return {"tags": names, "pad_label": pad}

    def head_config(self, run):
        head = run.spec.model.head
        return {"num_fc_layers": head.num_fc_layers, "fc_dropout": head.fc_dropout, "activation": head.activation}

    def build_heads(self, run, hidden, labels):
        head = self.head_config(run)
        return TokenClassifier(hidden, len(labels["tags"]), head["num_fc_layers"], head["fc_dropout"],
                               head["activation"])

    def heads_from_manifest(self, manifest, hidden):
        head = manifest["heads"]
        return TokenClassifier(hidden, len(manifest["labels"]["tags"]), head["num_fc_layers"], head["fc_dropout"],
                               head["activation"])

    def output_names(self, manifest):
        return ("logits",)

    # ------------------------------------------------------------------ data and training
    def read_split(self, run, section, what: str, names: list[str]):
        if not section.text_file or not section.labels_file:
            raise TaoctlError(f"{what}.text_file and {what}.labels_file must both be set")
        sentences, labels = read_word_files(self.in_data_dir(run.spec, section.text_file),
                                            self.in_data_dir(run.spec, section.labels_file), names, what)
        return limit(sentences, section.num_samples), limit(labels, section.num_samples)

    def train_data(self, run):
        prepared = self.prepare(run)
        names = prepared["labels"]["tags"]
        what = prepared["what"]
        sentences, labels = self.read_split(run, prepared["section"], what, names)
        # Predictions are decoded as IOB2 (nlp_common.words) when the training tags are IOB2 throughout.
        prepared["labels"] = {**prepared["labels"], "iob2": follows_iob2(labels, names)}
        validation = None
        if run.spec.validation_ds.text_file and run.spec.validation_ds.labels_file and \
                self.in_data_dir(run.spec, run.spec.validation_ds.text_file).is_file():
            validation = self.read_split(run, run.spec.validation_ds, "validation_ds", names)
        tokenizer = prepared["tokenizer"]
        encoding = tokenize_words(tokenizer, sentences, prepared["max_length"])
        token_labels = word_label_rows(encoding, labels, not run.spec.model.dataset.ignore_extra_tokens)
        features = [{"input_ids": encoding["input_ids"][i], "attention_mask": encoding["attention_mask"][i],
                     "token_type_ids": encoding["token_type_ids"][i], "labels": token_labels[i]}
                    for i in range(len(sentences))]
        counts = np.bincount([label for row in labels for label in row], minlength=len(names))
        run.echo(f"{what}: {len(sentences)} sentences, {int(counts.sum())} words")
        weights = None
        if run.spec.model.dataset.class_balancing == "weighted_loss":
            weights = torch.tensor(counts.sum() / (len(names) * np.maximum(counts, 1)), dtype=torch.float32)
        return TrainData(self.train_loader(run, prepared, features), validation=validation, class_weights=weights,
                         sample_texts=[" ".join(s) for s in sentences], **prepared)

    def training_step(self, run, model, data):
        weights = data.class_weights

        def step(net, batch):
            logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                               weight=weights.to(logits.device) if weights is not None else None,
                                               ignore_index=-100)
            return loss, {}

        return step

    def validation(self, run, data):
        if data.validation is None:
            return None
        sentences, labels = data.validation
        report = TaggingReport(sentences, labels, data.labels["tags"], data.labels["pad_label"],
                               run.spec.validation_ds.batch_size, data.tokenizer, data.max_length,
                               iob2_decoding(data.labels, "tags"))
        return Validation(report, best_metric="f1", mode="max")

    def preprocess(self, manifest):
        tokenizer = self.manifest_tokenizer(manifest)
        length = manifest["max_seq_length"]
        return lambda sentences: self.encode(tokenizer, [s.split() if isinstance(s, str) else s for s in sentences],
                                             length)

    # ------------------------------------------------------------------ evaluate / infer
    def evaluator(self, run, manifest):
        names = manifest["labels"]["tags"]
        sentences, labels = self.read_split(run, run.spec.test_ds, "test_ds", names)
        return TaggingReport(sentences, labels, names, manifest["labels"]["pad_label"],
                             run.flags.get("batch_size") or run.spec.test_ds.batch_size,
                             self.manifest_tokenizer(manifest), manifest["max_seq_length"],
                             iob2_decoding(manifest["labels"], "tags"))

    def infer(self, run, predictor):
        manifest = predictor.manifest
        names, pad = manifest["labels"]["tags"], manifest["labels"]["pad_label"]
        tokenizer = self.manifest_tokenizer(manifest)
        results = []
        for batch in self.batches([query.split() for query in run.spec.input_batch], 32):
            predicted = batch_word_predictions(tokenizer, batch, predictor(batch)[0], manifest["max_seq_length"],
                                               names.index(pad), iob2_decoding(manifest["labels"], "tags"))
            for words, row in zip(batch, predicted):
                tags = [names[i] for i in row]
                results.append({"query": " ".join(words), "tags": tags, "markup": markup(words, tags, pad)})
                echo(f"Query: {' '.join(words)}\nResult: {results[-1]['markup']}")
        self.write_infer_results(run, results)

    # ------------------------------------------------------------------ dataset_convert
    def dataset_convert(self, run):
        """CoNLL/IOB files of ``source_data_dir`` -> ``text_<file>``, ``labels_<file>`` and ``label_ids.csv`` (``O``
        first, then the tags of ``train_file_name`` sorted) in ``target_data_dir``, written together."""
        spec = run.spec
        source, target = Path(spec.source_data_dir), Path(spec.target_data_dir)
        names = list(dict.fromkeys([*spec.list_of_file_names, spec.train_file_name]))
        outputs = [target / f"{kind}_{name}" for name in spec.list_of_file_names for kind in ("text", "labels")]
        refuse_overwrites([(f"source_data_dir file {name}", source / name) for name in names],
                          [(str(path), path) for path in [*outputs, target / "label_ids.csv"]])
        converted = {}
        for name in spec.list_of_file_names:
            sentences = read_conll(source / name)
            if spec.max_length > 0:
                sentences = [piece for words, tags in sentences for piece in split_long(words, tags, spec.max_length)]
            converted[name] = sentences
        if spec.train_file_name not in converted:
            converted[spec.train_file_name] = read_conll(source / spec.train_file_name)
        tags = sorted({tag for _, row in converted[spec.train_file_name] for tag in row} - {"O"})
        unknown = {tag for name, rows in converted.items() for _, row in rows for tag in row} - set(tags) - {"O"}
        if unknown:
            echo(f"Warning: tags {', '.join(sorted(unknown))} are not in {spec.train_file_name}; they are added to "
                 f"label_ids.csv")
            tags = sorted(set(tags) | unknown)
        with atomic_paths() as stage:
            for name, sentences in converted.items():
                if name not in spec.list_of_file_names:
                    continue
                stage(target / f"text_{name}").write_text("".join(" ".join(w) + "\n" for w, _ in sentences))
                stage(target / f"labels_{name}").write_text("".join(" ".join(t) + "\n" for _, t in sentences))
            stage(target / "label_ids.csv").write_text("\n".join(["O", *tags]) + "\n")
        for name in spec.list_of_file_names:
            echo(f"{source / name}: {len(converted[name])} sentences -> {target / f'text_{name}'}, "
                 f"{target / f'labels_{name}'}")
        echo(f"Wrote {target / 'label_ids.csv'} ({len(tags) + 1} labels)")


TASK = TokenClassificationTask()
