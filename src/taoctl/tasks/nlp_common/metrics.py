"""Per-label precision/recall/F1/support with micro/macro/weighted averages, as NeMo's ClassificationReport
printed them for every NLP task (sentence classes, token tags, punctuation and capitalisation labels)."""

from __future__ import annotations

import numpy as np


def label_report(truth, predicted, names: list[str]) -> dict:
    """``{"per_label": {name: {precision, recall, f1, support}}, "averages": {micro|macro|weighted: ...},
    "accuracy"}`` over label ids ``0..len(names)-1`` (scikit-learn's counts)."""
    from sklearn.metrics import precision_recall_fscore_support

    truth, predicted = np.asarray(truth), np.asarray(predicted)
    ids = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=ids, zero_division=0)
    per_label = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(names, precision, recall, f1, support)}
    averages = {}
    for average in ("micro", "macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=ids, average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(truth))}
    return {"per_label": per_label, "averages": averages,
            "accuracy": float(np.mean(truth == predicted)) if len(truth) else 0.0}


def format_table(report: dict, title: str = "label") -> str:
    """The report as NeMo printed it: precision/recall/F1 in %, support, then the averages."""
    width = max([len(n) for n in report["per_label"]] + [16, len(title)])
    lines = [f"{title:<{width}} {'precision':>10} {'recall':>10} {'f1':>10} {'support':>10}"]
    for name, c in report["per_label"].items():
        lines.append(f"{name:<{width}} {c['precision'] * 100:10.2f} {c['recall'] * 100:10.2f} "
                     f"{c['f1'] * 100:10.2f} {c['support']:10d}")
    lines.append("-" * len(lines[0]))
    for average, c in report["averages"].items():
        lines.append(f"{average + ' avg':<{width}} {c['precision'] * 100:10.2f} {c['recall'] * 100:10.2f} "
                     f"{c['f1'] * 100:10.2f} {c['support']:10d}")
    return "\n".join(lines)
