"""Reading NeMo's text data files with ``file:line`` errors, and batching token ids.

Malformed data is refused with the file and line (never skipped silently, as NeMo's loaders did),
before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from taoctl.errors import TaoctlError


def read_lines(path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (without line ends); a missing, empty or undecodable file is one line."""
    path = Path(path)
    if not path.is_file():
        raise TaoctlError(f"{what}: {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TaoctlError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise TaoctlError(f"{path}: the {what} file is empty")
    return lines


HEADER = ("sentence", "label")


def read_tsv(path, num_classes: int, what: str) -> tuple[list[str], list[int]]:
    """``text<TAB>label`` lines; a missing TAB, a non-integer or out-of-range label is ``file:line``."""
    texts, labels = [], []
    for number, line in enumerate(read_lines(path, what), start=1):
        if not line.strip():
            continue
        text, tab, label = line.rstrip("\r").rpartition("\t")
        if number == 1 and (text.strip().lower(), label.strip().lower()) == HEADER:
            continue
        if not tab:
            raise TaoctlError(f"{path}:{number}: no TAB between the text and its label (NeMo's format: "
                              f"text<TAB>label)")
        try:
            value = int(label.strip())
        except ValueError:
            raise TaoctlError(f"{path}:{number}: label {label.strip()!r} is not an integer") from None
        if not 0 <= value < num_classes:
            raise TaoctlError(f"{path}:{number}: label {value} is out of range for {num_classes} classes "
                              f"(0..{num_classes - 1})")
        if not text.strip():
            raise TaoctlError(f"{path}:{number}: empty text")
        texts.append(" ".join(text.split()))
        labels.append(value)
    return texts, labels


def read_label_names(path, what: str) -> list[str]:
    """Label names, one per line (line index = label id); blank lines end nothing and are refused."""
    names = []
    for number, line in enumerate(read_lines(path, what), start=1):
        name = line.strip().split(",")[0].strip() if line.strip() else ""
        if not name:
            raise TaoctlError(f"{path}:{number}: empty label name")
        if name in names:
            raise TaoctlError(f"{path}:{number}: label {name!r} is listed twice")
        names.append(name)
    return names


def limit(items: list, num_samples: int) -> list:
    """NeMo's ``num_samples``: -1 keeps every example, n the first n."""
    return items if num_samples is None or num_samples < 0 else items[:num_samples]


class Encoded(torch.utils.data.Dataset):
    """Tokenised examples: per example a dict of int lists (input_ids, token_type_ids, ...) plus its targets."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index]


def pad_batch(features: list[dict], pad_id: int, label_pad: int = -100) -> dict[str, torch.Tensor]:
    """Features padded to the batch's longest sequence: ``input_ids`` with the tokenizer's pad id,
    ``attention_mask``/``token_type_ids`` with 0, per-token label lists with ``label_pad`` (ignored by the
    loss); scalar targets stacked."""
    longest = max(len(f["input_ids"]) for f in features)
    batch = {}
    for name in features[0]:
        values = [f[name] for f in features]
        if isinstance(values[0], (list, tuple, np.ndarray)):
            fill = pad_id if name == "input_ids" else label_pad if name.endswith("labels") else 0
            array = np.full((len(values), longest), fill, dtype=np.int64)
            for row, value in enumerate(values):
                array[row, :len(value)] = value
            batch[name] = torch.from_numpy(array)
        else:
            batch[name] = torch.tensor(values)
    return batch
