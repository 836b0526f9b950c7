"""Classification metrics: top-k accuracy, confusion matrix, per-class precision/recall.

Accumulate logits/labels batch by batch with :class:`ClassificationMeter`, then read a
plain-dict report (JSON-ready), a text table, or draw the confusion matrix as a PNG.
"""

from __future__ import annotations

import numpy as np

from taoctl.fileio import atomic_path


class ClassificationMeter:
    def __init__(self, num_classes: int, top_k: int = 5):
        self.num_classes = num_classes
        self.top_k = max(1, min(top_k, num_classes))
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [true, predicted]
        self.topk_hits = 0
        self.count = 0
        self.loss_sum = 0.0

    def update(self, logits, labels, loss_sum: float | None = None) -> None:
        """``logits`` N x C (numpy or torch), ``labels`` N ints; ``loss_sum`` the batch's summed loss."""
        logits = _numpy(logits)
        labels = _numpy(labels).astype(np.int64)
        predicted = logits.argmax(axis=1)
        np.add.at(self.confusion, (labels, predicted), 1)
        top = np.argpartition(-logits, self.top_k - 1, axis=1)[:, :self.top_k] if self.top_k < logits.shape[1] \
            else np.tile(np.arange(logits.shape[1]), (len(labels), 1))
        self.topk_hits += int((top == labels[:, None]).any(axis=1).sum())
        self.count += len(labels)
        if loss_sum is not None:
            self.loss_sum += float(loss_sum)

    def report(self, class_names: list[str]) -> dict:
        cm = self.confusion
        correct = np.diag(cm)
        predicted = cm.sum(axis=0)
        actual = cm.sum(axis=1)
        per_class = {}
        for i, name in enumerate(class_names):
            precision = correct[i] / predicted[i] if predicted[i] else 0.0
            recall = correct[i] / actual[i] if actual[i] else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                               "support": int(actual[i])}
        count = max(self.count, 1)
        return {
            "num_images": int(self.count),
            "loss": self.loss_sum / count,
            "top1_accuracy": float(correct.sum() / count),
            f"top{self.top_k}_accuracy": float(self.topk_hits / count),
            "top_k": self.top_k,
            "per_class": per_class,
            "confusion_matrix": cm.tolist(),
            "classes": list(class_names),
        }


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def format_report(report: dict) -> str:
    """The report as text: headline numbers, a per-class table and the confusion matrix."""
    k = report["top_k"]
    headline = (f"images: {report['num_images']}  loss: {report['loss']:.4f}  "
                f"top-1 accuracy: {report['top1_accuracy'] * 100:.2f} %")
    if k > 1:
        headline += f"  top-{k} accuracy: {report[f'top{k}_accuracy'] * 100:.2f} %"
    lines = [headline, ""]
    names = report["classes"]
    width = max(12, max(len(n) for n in names) + 2)
    lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name in names:
        row = report["per_class"][name]
        lines.append(f"{name:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                     f"{row['support']:>10d}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    cell = max(6, max(len(str(v)) for row in report["confusion_matrix"] for v in row) + 2)
    short = [n[:cell - 1] for n in names]
    lines.append(" " * width + "".join(f"{n:>{cell}}" for n in short))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)


def save_confusion_png(report: dict, path) -> None:
    """Draw the confusion matrix (counts, row-normalised colours) to a PNG, atomically."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion_matrix"])
    names = report["classes"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {report['top1_accuracy'] * 100:.2f} % on {report['num_images']} images")
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
