"""intent_slot_classification: a query's intent and a slot per word, one encoder with two heads (NeMo's joint
model), on the shared NLP base. Loss: ``intent_loss_weight * intent CE + (1 - intent_loss_weight) * slot CE``.
Evaluation reports the intents (per-label table, accuracy) and the slots (per-label table at word
level and entity-level F1, CoNLL's scoring).
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
from taoctl.fileio import write_atomic
from taoctl.tasks.nlp_common.data import limit, read_label_names, read_lines, read_tsv
from taoctl.tasks.nlp_common.heads import SequenceClassifier, TokenClassifier
from taoctl.tasks.nlp_common.metrics import format_table, label_report
from taoctl.tasks.nlp_common.task import NLPTask
from taoctl.tasks.nlp_common.words import (batch_word_predictions, batches_by_length, follows_iob2, format_tagging,
                                           iob2_decoding, tagging_report, tokenize_words, word_label_rows)


class JointHeads(nn.Module):
    """NeMo's intent head (on [CLS]) and slot head (on every token): ``(intent_logits, slot_logits)``."""

    def __init__(self, hidden: int, intents: int, slots: int, num_layers: int, dropout: float):
        super().__init__()
        self.intent = SequenceClassifier(hidden, intents, num_layers, dropout)
        self.slot = TokenClassifier(hidden, slots, num_layers, dropout, "relu")

    def forward(self, hidden, attention_mask):
        return self.intent(hidden, attention_mask), self.slot(hidden, attention_mask)


def read_queries(tsv: Path, slots_file: Path, intents: int, slots: int) -> tuple[list[list[str]], list[int],
                                                                                  list[list[int]]]:
    """``<prefix>.tsv`` and ``<prefix>_slots.tsv``: a query's words, its intent id and a slot id per word."""
    texts, intent_ids = read_tsv(tsv, intents, "intent file")
    rows = [line for line in read_lines(slots_file, "slots file")]
    numbered = [(number, line) for number, line in enumerate(rows, start=1) if line.strip()]
    if len(numbered) != len(texts):
        raise TaoctlError(f"{slots_file}: {len(numbered)} slot lines, but {tsv} has {len(texts)} queries: each query "
                          f"needs its line of slot ids")
    words, slot_ids = [], []
    for text, (number, line) in zip(texts, numbered):
        try:
            ids = [int(value) for value in line.split()]
        except ValueError:
            raise TaoctlError(f"{slots_file}:{number}: slot ids must be integers") from None
        query = text.split()
        if len(ids) != len(query):
            raise TaoctlError(f"{slots_file}:{number}: {len(ids)} slot ids for the {len(query)} words of "
                              f"{query[:6]}...")
        bad = next((i for i in ids if not 0 <= i < slots), None)
        if bad is not None:
            raise TaoctlError(f"{slots_file}:{number}: slot id {bad} is out of range for {slots} slots")
        words.append(query)
        slot_ids.append(ids)
    return words, intent_ids, slot_ids


class IntentSlotReport(Evaluator):
    def __init__(self, queries, intents, slots, intent_names, slot_names, pad_label: str, batch_size: int,
                 tokenizer, max_length: int, iob2_tags: list[str] | None):
        self.queries, self.intents, self.slots = queries, np.asarray(intents), slots
        self.intent_names, self.slot_names, self.iob2_tags = intent_names, slot_names, iob2_tags
        self.pad_id = slot_names.index(pad_label)
        self.batch_size, self.tokenizer, self.max_length = batch_size, tokenizer, max_length

    def run(self, predictor):
        intent_predicted = np.zeros(len(self.queries), dtype=np.int64)
        slot_predicted: list[list[int]] = [[] for _ in self.queries]
        for rows, (intent_logits, slot_logits) in batches_by_length(self.queries, self.batch_size, predictor):
            intent_predicted[rows] = intent_logits.argmax(-1)
            batch = [self.queries[i] for i in rows]
            for index, row in zip(rows, batch_word_predictions(self.tokenizer, batch, slot_logits, self.max_length,
                                                               self.pad_id, self.iob2_tags)):
                slot_predicted[index] = row
        intents = label_report(self.intents, intent_predicted, self.intent_names)
        slots = tagging_report(self.slots, slot_predicted, self.slot_names)
        return {"intents": intents, "slots": slots, "intent_accuracy": intents["accuracy"], "slot_f1": slots["f1"],
                "queries": len(self.queries), "source": predictor.source}

    def summary(self, report):
        return {"intent_accuracy": report["intent_accuracy"], "slot_f1": report["slot_f1"],
                "joint": (report["intent_accuracy"] + report["slot_f1"]) / 2}

    def write(self, report, out_dir):
        echo("Intent report\n" + format_table(report["intents"], "intent"))
        echo("\nSlot report\n" + format_tagging(report["slots"], "slot"))
        echo(f"\nintent accuracy {report['intent_accuracy'] * 100:.2f} %, slot F1 (entity level) "
             f"{report['slot_f1'] * 100:.2f} on {report['queries']} queries")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "results.json", json.dumps(report, indent=1))
        echo(f"Wrote {out_dir / 'results.json'}")


class IntentSlotTask(NLPTask):
    name = "intent_slot_classification"
    spec_module = "taoctl.tasks.intent_slot_classification.spec"

    data_dir_fields = ("data_dir", "model.data_dir")
    data_dir_holds = "dict.intents.csv, dict.slots.csv, train.tsv, train_slots.tsv, ..."

    def max_seq_length(self, spec):
        return spec.model.language_model.max_seq_length

    def labels(self, run):
        spec = run.spec
        intents = read_label_names(self.in_data_dir(spec, spec.model.class_labels.intent_labels_file),
                                   "model.class_labels.intent_labels_file")
        slots_path = self.in_data_dir(spec, spec.model.class_labels.slot_labels_file)
        slots = read_label_names(slots_path, "model.class_labels.slot_labels_file")
        pad = spec.model.data_desc.pad_label
        if pad not in slots:
            raise TaoctlError(f"{slots_path}: the slot pad label {pad!r} (model.data_desc.pad_label) is not in it")
        return {"intents": intents, "slots": slots, "pad_label": pad}

    def head_config(self, run):
        head = run.spec.model.head
        return {"num_output_layers": head.num_output_layers, "fc_dropout": head.fc_dropout}

    def heads_from_manifest(self, manifest, hidden):
        head, labels = manifest["heads"], manifest["labels"]
        return JointHeads(hidden, len(labels["intents"]), len(labels["slots"]), head["num_output_layers"],
                          head["fc_dropout"])

    def build_heads(self, run, hidden, labels):
        head = self.head_config(run)
        return JointHeads(hidden, len(labels["intents"]), len(labels["slots"]), head["num_output_layers"],
                          head["fc_dropout"])

    def output_names(self, manifest):
        return ("intent_logits", "slot_logits")

    def read_split(self, run, section, what: str, labels: dict):
        if not section.prefix:
            raise TaoctlError(f"{what}.prefix is not set (e.g. train: train.tsv and train_slots.tsv)")
        words, intents, slots = read_queries(self.in_data_dir(run.spec, f"{section.prefix}.tsv"),
                                             self.in_data_dir(run.spec, f"{section.prefix}_slots.tsv"),
                                             len(labels["intents"]), len(labels["slots"]))
        count = section.num_samples
        return limit(words, count), limit(intents, count), limit(slots, count)

    def train_data(self, run):
        prepared = self.prepare(run)
        labels = prepared["labels"]
        what = prepared["what"]
        words, intents, slots = self.read_split(run, prepared["section"], what, labels)
        # Slots are decoded as IOB2 (nlp_common.words) when the training slots are IOB2 throughout.
        prepared["labels"] = labels = {**labels, "iob2": follows_iob2(slots, labels["slots"])}
        validation = None
        if run.spec.validation_ds.prefix and self.in_data_dir(run.spec, f"{run.spec.validation_ds.prefix}.tsv").is_file():
            validation = self.read_split(run, run.spec.validation_ds, "validation_ds", labels)
        tokenizer = prepared["tokenizer"]
        encoding = tokenize_words(tokenizer, words, prepared["max_length"])
        slot_rows = word_label_rows(encoding, slots, not run.spec.model.ignore_extra_tokens)
        features = [{"input_ids": encoding["input_ids"][i], "attention_mask": encoding["attention_mask"][i],
                     "token_type_ids": encoding["token_type_ids"][i], "slot_labels": slot_rows[i],
                     "intent_label": intents[i]} for i in range(len(words))]
        run.echo(f"{what}: {len(words)} queries, {len(labels['intents'])} intents, {len(labels['slots'])} slot labels")
        weights = None
        if run.spec.model.class_balancing == "weighted_loss":
            counts = np.bincount(intents, minlength=len(labels["intents"]))
            weights = torch.tensor(len(intents) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
        return TrainData(self.train_loader(run, prepared, features), validation=validation, intent_weights=weights,
                         sample_texts=[" ".join(w) for w in words], **prepared)

    def training_step(self, run, model, data):
        weight = run.spec.model.intent_loss_weight
        intent_weights = data.intent_weights

        def step(net, batch):
            intent_logits, slot_logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            intent_loss = nn.functional.cross_entropy(
                intent_logits, batch["intent_label"],
                weight=intent_weights.to(intent_logits.device) if intent_weights is not None else None)
            slot_loss = nn.functional.cross_entropy(slot_logits.flatten(0, 1), batch["slot_labels"].flatten(),
                                                    ignore_index=-100)
            logs = {"intent_loss": float(intent_loss.detach()), "slot_loss": float(slot_loss.detach())}
            return weight * intent_loss + (1 - weight) * slot_loss, logs

        return step

    def validation(self, run, data):
        if data.validation is None:
            return None
        words, intents, slots = data.validation
        labels = data.labels
        return Validation(IntentSlotReport(words, intents, slots, labels["intents"], labels["slots"],
                                           labels["pad_label"], run.spec.validation_ds.batch_size, data.tokenizer,
                                           data.max_length, iob2_decoding(labels, "slots")),
                          best_metric="joint", mode="max")

    def preprocess(self, manifest):
        tokenizer = self.manifest_tokenizer(manifest)
        length = manifest["max_seq_length"]
        return lambda queries: self.encode(tokenizer, [q.split() if isinstance(q, str) else q for q in queries],
                                           length)

    def evaluator(self, run, manifest):
        labels = manifest["labels"]
        words, intents, slots = self.read_split(run, run.spec.test_ds, "test_ds", labels)
        return IntentSlotReport(words, intents, slots, labels["intents"], labels["slots"], labels["pad_label"],
                                run.flags.get("batch_size") or run.spec.test_ds.batch_size,
                                self.manifest_tokenizer(manifest), manifest["max_seq_length"],
                                iob2_decoding(labels, "slots"))

    def infer(self, run, predictor):
        manifest = predictor.manifest
        labels = manifest["labels"]
        tokenizer = self.manifest_tokenizer(manifest)
        pad = labels["slots"].index(labels["pad_label"])
        results = []
        for batch in self.batches([query.split() for query in run.spec.input_batch], 32):
            intent_logits, slot_logits = predictor(batch)
            probabilities = torch.softmax(torch.from_numpy(intent_logits), -1).numpy()
            words_slots = batch_word_predictions(tokenizer, batch, slot_logits, manifest["max_seq_length"], pad,
                                                 iob2_decoding(labels, "slots"))
            for words, row, slot_row in zip(batch, probabilities, words_slots):
                intent = labels["intents"][int(row.argmax())]
                slots = [labels["slots"][i] for i in slot_row]
                results.append({"query": " ".join(words), "intent": intent, "confidence": float(row.max()),
                                "slots": slots})
                echo(f"Query: {' '.join(words)}\nPredicted intent: {intent} ({row.max():.3f})\nPredicted slots: "
                     + " ".join(w if s == labels["pad_label"] else f"{w}[{s}]" for w, s in zip(words, slots)))
        self.write_infer_results(run, results)


TASK = IntentSlotTask()
