"""Word-level labels on sub-word tokens, as NeMo's token-level tasks define them.

A sentence is a list of words; the tokenizer splits words into sub-tokens. A word's label sits on
its first sub-token; the other sub-tokens, [CLS]/[SEP] and padding are ignored by the loss
(``IGNORE``). A word that tokenizes to nothing (WNUT's U+FE0F) or lies beyond ``max_seq_length``
has no position: it cannot be learnt, and its prediction is the task's pad label.

A model trained on IOB2 tags (an entity starts with ``B-X``; ``I-X`` only continues an ``X``) predicts,
per sentence, the most probable valid IOB2 sequence (Viterbi over the words' softmax) rather than each
word's argmax, which may open an entity with ``I-X`` or switch type inside one: on WNUT-17 (MiniLM, the
default recipe) entity F1 went from 57.20 to 58.07 on dev and from 44.77 to 45.78 on test. Data that is not
IOB2 throughout (IOB1, where ``I-X`` opens entities, or labels without prefixes) keeps the argmax.
"""

from __future__ import annotations

import numpy as np

from taoctl.errors import TaoctlError
from taoctl.tasks.nlp_common.data import read_lines
from taoctl.tasks.nlp_common.metrics import format_table, label_report

IGNORE = -100


def tokenize_words(tokenizer, sentences: list[list[str]], max_length: int, padding: bool = False):
    """The tokenizer's encoding of ``sentences`` (word lists) with word ids, cut at ``max_length``."""
    return tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length, padding=padding,
                     return_token_type_ids=True)


def first_positions(encoding, row: int, words: int) -> list[int | None]:
    """Per word of sentence ``row``: the position of its first sub-token, or None when it has none."""
    positions: list[int | None] = [None] * words
    for position, word in enumerate(encoding.word_ids(row)):
        if word is not None and positions[word] is None:
            positions[word] = position
    return positions


def word_label_rows(encoding, labels: list[list[int]], extra_tokens: bool = False) -> list[list[int]]:
    """Per sentence, a label per token: the word's label on its first sub-token, IGNORE elsewhere; with
    ``extra_tokens`` (NeMo's ``ignore_extra_tokens: false``) on its other sub-tokens too."""
    rows = []
    for row, sentence in enumerate(labels):
        tokens = [IGNORE] * len(encoding["input_ids"][row])
        if extra_tokens:
            for position, word in enumerate(encoding.word_ids(row)):
                if word is not None and word < len(sentence):
                    tokens[position] = sentence[word]
        else:
            for word, position in enumerate(first_positions(encoding, row, len(sentence))):
                if position is not None:
                    tokens[position] = sentence[word]
        rows.append(tokens)
    return rows


def word_predictions(encoding, row: int, words: int, token_predictions, pad_label: int) -> list[int]:
    """Per word: the prediction at its first sub-token, ``pad_label`` for a word without one."""
    return [pad_label if position is None else int(token_predictions[position])
            for position in first_positions(encoding, row, words)]


def batch_word_predictions(tokenizer, batch: list[list[str]], token_logits, max_length: int, pad_label: int,
                           iob2_tags: list[str] | None = None) -> list[list[int]]:
    """Per sentence of ``batch``, a predicted label id per word from the model's per-token logits of it
    (the batch tokenized as the predictor did: padded to its longest, cut at ``max_length``). With
    ``iob2_tags`` (the label names of a model trained on IOB2 data) the best valid IOB2 sequence."""
    encoding = tokenize_words(tokenizer, batch, max_length, padding=True)
    logits = np.asarray(token_logits, dtype=np.float64)
    if iob2_tags is None:
        tokens = logits.argmax(-1)
        return [word_predictions(encoding, row, len(words), tokens[row], pad_label)
                for row, words in enumerate(batch)]
    shifted = logits - logits.max(-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    start, transitions = iob2_constraints(iob2_tags)
    pad_only = np.where(np.arange(len(iob2_tags)) == pad_label, 0.0, FORBIDDEN)
    return [best_sequence(np.array([pad_only if position is None else log_probabilities[row, position]
                                    for position in first_positions(encoding, row, len(words))]), start, transitions)
            for row, words in enumerate(batch)]


def iob2_decoding(labels: dict, key: str) -> list[str] | None:
    """``batch_word_predictions``' ``iob2_tags`` for a model's labels: its names ``labels[key]`` when its training
    tags were IOB2 (``labels["iob2"]``, which model files written before it lack), else None (the argmax)."""
    return labels[key] if labels.get("iob2") else None


# The score of a forbidden step: finite, so a sentence always has a best path and sums never become NaN.
FORBIDDEN = -1e9


def follows_iob2(rows: list[list[int]], names: list[str]) -> bool:
    """Whether label rows are IOB2 throughout: some ``I-X``, each right after a ``B-X`` or an ``I-X``."""
    inside = [name.startswith("I-") for name in names]
    if not any(inside[label] for row in rows for label in row):
        return False
    start, transitions = iob2_constraints(names)
    return all(start[row[0]] == 0.0 and all(transitions[a, b] == 0.0 for a, b in zip(row, row[1:]))
               for row in rows if row)


def iob2_constraints(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """IOB2's grammar as scores: ``start`` [L] (0, or FORBIDDEN for a first label) and ``transitions`` [L, L]
    (previous, next): ``I-X`` may only follow ``B-X`` or ``I-X``."""
    kinds = [name[2:] if name.startswith(("B-", "I-")) else None for name in names]
    inside = np.array([name.startswith("I-") for name in names])
    continues = np.array([[kinds[a] is not None and kinds[a] == kinds[b] for b in range(len(names))]
                          for a in range(len(names))])
    transitions = np.where(inside[None, :] & ~continues, FORBIDDEN, 0.0)
    return np.where(inside, FORBIDDEN, 0.0), transitions


def best_sequence(scores: np.ndarray, start: np.ndarray, transitions: np.ndarray) -> list[int]:
    """Viterbi: the label sequence maximising the words' ``scores`` [W, L] plus start and transition scores."""
    if not len(scores):
        return []
    best, back = start + scores[0], []
    for word_scores in scores[1:]:
        total = best[:, None] + transitions
        back.append(total.argmax(0))
        best = total.max(0) + word_scores
    path = [int(best.argmax())]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return path[::-1]


def batches_by_length(items: list, batch_size: int, predictor):
    """``(row indices, predictor outputs)`` over ``items`` in batches of similar length (less padding)."""
    order = np.argsort([len(item) for item in items], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield rows, predictor([items[i] for i in rows])


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """CoNLL's chunks of a tag sequence as ``(type, first, last)``: a chunk starts at ``B-X``, or at ``I-X`` that
    does not continue an ``X`` chunk (conlleval's reading of IOB1), and runs over the ``I-X`` that follow."""
    spans, current = set(), None
    for index, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            spans.add((current[0], current[1], index - 1))
            current = None
        if prefix in ("B", "I") and kind and not continues:
            current = (kind, index)
    return spans


def entity_report(truth: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level (CoNLL) precision/recall/F1 per entity type, and their micro/macro/weighted averages: an
    entity counts when its type and both ends match."""
    gold, found = set(), set()
    for sentence, (true_tags, predicted_tags) in enumerate(zip(truth, predicted)):
        gold |= {(sentence, *span) for span in entity_spans(true_tags)}
        found |= {(sentence, *span) for span in entity_spans(predicted_tags)}

    def scores(kinds) -> dict:
        g = {s for s in gold if s[1] in kinds}
        f = {s for s in found if s[1] in kinds}
        hit = len(g & f)
        precision, recall = (hit / len(f) if f else 0.0), (hit / len(g) if g else 0.0)
        f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(g)}

    per_label = {kind: scores({kind}) for kind in sorted({s[1] for s in gold | found})}
    total = sum(v["support"] for v in per_label.values())
    averages = {"micro": scores(set(per_label))}
    averages["macro"] = {k: float(np.mean([v[k] for v in per_label.values()])) if per_label else 0.0
                         for k in ("precision", "recall", "f1")} | {"support": total}
    averages["weighted"] = {k: sum(v[k] * v["support"] for v in per_label.values()) / total if total else 0.0
                            for k in ("precision", "recall", "f1")} | {"support": total}
    return {"per_label": per_label, "averages": averages}


def tagging_report(truth: list[list[int]], predicted: list[list[int]], names: list[str]) -> dict:
    """NeMo's word-level per-label report and the entity-level one (CoNLL), with the entity micro F1 as ``f1``."""
    words = label_report([t for row in truth for t in row], [p for row in predicted for p in row], names)
    entities = entity_report([[names[i] for i in row] for row in truth], [[names[i] for i in row] for row in predicted])
    return {"words": words, "entities": entities, "f1": entities["averages"].get("micro", {}).get("f1", 0.0)}


def format_tagging(report: dict, title: str = "tag") -> str:
    return format_table(report["words"], f"{title} (word level)") + "\n\n" + format_table(report["entities"], "entity")


def read_word_files(text_file, labels_file, names: list[str], what: str) -> tuple[list[list[str]], list[list[int]]]:
    """NeMo's ``text_*.txt`` (space-separated words a line) and ``labels_*.txt`` (a label a word): line and word
    counts must agree and every label must be in ``names``, else ``file:line``."""
    texts = read_lines(text_file, f"{what}.text_file")
    labels = read_lines(labels_file, f"{what}.labels_file")
    if len(texts) != len(labels):
        raise TaoctlError(f"{labels_file}: {len(labels)} lines, but {text_file} has {len(texts)}: each text line "
                          f"needs its line of labels")
    ids = {name: index for index, name in enumerate(names)}
    sentences, label_rows = [], []
    for number, (text, label_line) in enumerate(zip(texts, labels), start=1):
        words, tags = text.split(), label_line.split()
        if not words and not tags:
            continue
        if len(words) != len(tags):
            raise TaoctlError(f"{labels_file}:{number}: {len(tags)} labels for the {len(words)} words of "
                              f"{text_file}:{number}")
        unknown = next((tag for tag in tags if tag not in ids), None)
        if unknown is not None:
            raise TaoctlError(f"{labels_file}:{number}: label {unknown!r} is not in the label map "
                              f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
        sentences.append(words)
        label_rows.append([ids[tag] for tag in tags])
    return sentences, label_rows
