"""text_classification: a sentence classifier (NeMo's SequenceClassifier) on the shared NLP base.

Data: NeMo's TSV, ``text<TAB>label`` with integer labels from 0, no header (a ``sentence<TAB>label``
header line, which older NeMo wrote, is skipped). Class names come from
``model.class_labels.class_labels_file`` (one per line) or are the label ids.
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
from taoctl.tasks.nlp_common.data import limit, read_label_names, read_tsv
from taoctl.tasks.nlp_common.metrics import format_table, label_report
from taoctl.tasks.nlp_common.heads import SequenceClassifier
from taoctl.tasks.nlp_common.task import NLPTask
from taoctl.tasks.nlp_common.words import batches_by_length

class ClassificationReport(Evaluator):
    """Accuracy, loss and per-class precision/recall/F1/support with micro/macro/weighted averages, as NeMo's
    ClassificationReport printed them; one evaluator for training's validation and ``evaluate``."""

    def __init__(self, texts: list[str], labels: list[int], classes: list[str], batch_size: int):
        self.texts, self.labels, self.classes, self.batch_size = texts, np.asarray(labels), classes, batch_size

    def logits(self, predictor) -> np.ndarray:
        out = np.zeros((len(self.texts), len(self.classes)), dtype=np.float32)
        for rows, outputs in batches_by_length(self.texts, self.batch_size, predictor):
            out[rows] = outputs[0]
        return out

    def run(self, predictor):
        logits = self.logits(predictor)
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(self.labels)))
        return {**label_report(self.labels, logits.argmax(1), self.classes), "loss": loss,
                "examples": int(len(self.labels)), "source": predictor.source}

    def summary(self, report):
        values = {"accuracy": report["accuracy"], "loss": report["loss"], "f1": report["averages"]["macro"]["f1"]}
        values.update({f"f1_{name}": c["f1"] for name, c in report["per_label"].items()})
        return values

    def write(self, report, out_dir):
        echo(format_report(report))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "results.json", json.dumps(report, indent=1))
        echo(f"Wrote {out_dir / 'results.json'}")


def format_report(report: dict) -> str:
    """NeMo's ClassificationReport table and TAO's test_* line."""
    return (format_table(report) + f"\n\naccuracy {report['accuracy'] * 100:.2f} % on {report['examples']} examples; "
            f"test_loss {report['loss']:.4f}, test_f1 {report['averages']['macro']['f1'] * 100:.2f}")


class TextClassificationTask(NLPTask):
    name = "text_classification"
    spec_module = "taoctl.tasks.text_classification.spec"

    def labels(self, run):
        spec = run.spec.model
        count = spec.dataset.num_classes
        if spec.class_labels.class_labels_file:
            names = read_label_names(spec.class_labels.class_labels_file, "model.class_labels.class_labels_file")
            if len(names) != count:
                raise TaoctlError(f"{spec.class_labels.class_labels_file}: {len(names)} class names, but "
                                  f"model.dataset.num_classes is {count}")
            return {"classes": names}
        return {"classes": [str(i) for i in range(count)]}

    def head_config(self, run):
        head = run.spec.model.classifier_head
        return {"num_output_layers": head.num_output_layers, "fc_dropout": head.fc_dropout}

    def build_heads(self, run, hidden, labels):
        head = run.spec.model.classifier_head
        return SequenceClassifier(hidden, len(labels["classes"]), head.num_output_layers, head.fc_dropout)

    def heads_from_manifest(self, manifest, hidden):
        head = manifest["heads"]
        return SequenceClassifier(hidden, len(manifest["labels"]["classes"]), head["num_output_layers"],
                                  head["fc_dropout"])

    def output_names(self, manifest):
        return ("logits",)

    def max_seq_length(self, spec):
        return spec.model.dataset.max_seq_length

    # ------------------------------------------------------------------ data and training
    def train_data(self, run):
        prepared = self.prepare(run)
        classes = prepared["labels"]["classes"]
        section = prepared["section"]
        what = f"{prepared['what']}.file_path"
        texts, labels = read_tsv(section.file_path, len(classes), what)
        texts, labels = limit(texts, section.num_samples), limit(labels, section.num_samples)
        validation = None
        if run.spec.validation_ds.file_path:
            texts_v, labels_v = read_tsv(run.spec.validation_ds.file_path, len(classes), "validation_ds.file_path")
            count = run.spec.validation_ds.num_samples
            validation = limit(texts_v, count), limit(labels_v, count)
        tokenizer = prepared["tokenizer"]
        encoded = tokenizer(texts, truncation=True, max_length=prepared["max_length"], return_token_type_ids=True)
        features = [{"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": label}
                    for ids, mask, types, label in zip(encoded["input_ids"], encoded["attention_mask"],
                                                       encoded["token_type_ids"], labels)]
        counts = np.bincount(labels, minlength=len(classes))
        run.echo(f"{what}: {len(texts)} examples ({', '.join(f'{c} {n}' for c, n in zip(classes, counts))})")
        loader = self.train_loader(run, prepared, features)
        weights = None
        if run.spec.model.dataset.class_balancing == "weighted_loss":
            weights = torch.tensor(len(labels) / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
        return TrainData(loader, validation=validation, class_weights=weights, sample_texts=texts, **prepared)

    def training_step(self, run, model, data):
        weights = data.class_weights

        def step(net, batch):
            logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = nn.functional.cross_entropy(logits, batch["labels"],
                                               weight=weights.to(logits.device) if weights is not None else None)
            return loss, {}

        return step

    def validation(self, run, data):
        if data.validation is None:
            return None
        texts, labels = data.validation
        report = ClassificationReport(texts, labels, data.labels["classes"], run.spec.validation_ds.batch_size)
        return Validation(report, best_metric="accuracy", mode="max")

    # ------------------------------------------------------------------ evaluate / infer
    def evaluator(self, run, manifest):
        classes = manifest["labels"]["classes"]
        texts, labels = read_tsv(run.spec.test_ds.file_path, len(classes), "test_ds.file_path")
        count = run.spec.test_ds.num_samples
        return ClassificationReport(limit(texts, count), limit(labels, count), classes,
                                    run.flags.get("batch_size") or run.spec.test_ds.batch_size)

    def infer(self, run, predictor):
        queries = list(run.spec.input_batch)
        classes = predictor.manifest["labels"]["classes"]
        results = []
        for batch in self.batches(queries, 64):
            logits = predictor(batch)[0]
            probabilities = torch.softmax(torch.from_numpy(logits), -1).numpy()
            for query, row in zip(batch, probabilities):
                best = int(row.argmax())
                results.append({"query": query, "label": classes[best], "label_id": best,
                                "confidence": float(row[best])})
                echo(f"Query: {query}\nPredicted label: {classes[best]} ({row[best]:.3f})")
        self.write_infer_results(run, results)


TASK = TextClassificationTask()
