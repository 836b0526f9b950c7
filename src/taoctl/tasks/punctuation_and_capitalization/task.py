"""punctuation_and_capitalization: per word, the punctuation that follows it and whether it is capitalised (NeMo's
two token heads), on the shared NLP base.

Labels (TAO's 2-character scheme): the first character is the punctuation after the word (``O``,
``,``, ``.``, ``?``), the second ``U`` (first letter upper case) or ``O``. ``dataset_convert`` makes
them from raw text: per whitespace token, a final ``,`` ``.`` or ``?`` (the last of them in the
token's trailing marks) is the label, every other mark is deleted unless ``mark_aliases`` (a taoctl
extension) labels it as one of those (a hyphen or dash splits words; apostrophes stay), the text is
lower-cased; a paragraph is cut into lines of whole sentences (``max_words_per_line``, a taoctl
extension). Lines longer than half ``max_seq_length`` words are cut into pieces of that many words
for training and evaluation, so no word is lost to truncation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
from torch import nn

from taoctl.engine.cli import echo
from taoctl.engine.task import Evaluator, TrainData, Validation
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_paths, write_atomic
from taoctl.outputs import refuse_overwrites
from taoctl.tasks.nlp_common.data import limit, read_lines
from taoctl.tasks.nlp_common.heads import TokenClassifier
from taoctl.tasks.nlp_common.metrics import format_table, label_report
from taoctl.tasks.nlp_common.task import NLPTask
from taoctl.tasks.nlp_common.words import batch_word_predictions, batches_by_length, read_word_files, tokenize_words, \
    word_label_rows

MARKS = (",", ".", "?")
_NOT_WORD = re.compile(r"[^\w']+")
_TRAILING = re.compile(r"[^\w']*$")
SUMMARY_NAMES = {",": "comma", ".": "period", "?": "question"}


def label_token(token: str, aliases: Mapping[str, str] = MappingProxyType({})) -> tuple[list[str], str, bool]:
    """A raw whitespace token -> (its words, lower-case; the punctuation label of the last one; whether it ends a
    sentence). ``"Hello,"`` -> (["hello"], ",", False); ``twenty-one.`` -> (["twenty", "one"], ".", True);
    ``aliases`` label other marks as one of :data:`MARKS` (``{";": ","}``: ``"so;"`` -> (["so"], ",", False))."""
    trailing = _TRAILING.search(token).group()
    mark = next((aliases.get(c, c) for c in reversed(trailing) if aliases.get(c, c) in MARKS), "O")
    words = [w.strip("'") for w in _NOT_WORD.split(token) if w.strip("'")]  # quotes go, "don't" stays
    return words, mark, mark in (".", "?") or "!" in trailing


def convert_line(line: str, aliases: Mapping[str, str] = MappingProxyType({})) -> list[tuple[list[str], list[str]]]:
    """A raw line -> sentences of (lower-case words, 2-character labels); ``aliases`` as :func:`label_token`'s."""
    sentences, words, labels = [], [], []
    for token in line.split():
        parts, mark, ends = label_token(token, aliases)
        if not parts:
            if mark != "O" and labels:  # a detached mark (" ?") belongs to the word before it
                labels[-1] = mark + labels[-1][1]
            if ends and words:
                sentences.append((words, labels))
                words, labels = [], []
            continue
        for index, part in enumerate(parts):
            capital = "U" if part[0].isupper() else "O"
            words.append(part.lower())
            labels.append((mark if index == len(parts) - 1 else "O") + capital)
        if ends:
            sentences.append((words, labels))
            words, labels = [], []
    if words:
        sentences.append((words, labels))
    return sentences


def windows(sentences: list[tuple[list[str], list[str]]], max_words: int) -> list[tuple[list[str], list[str]]]:
    """Consecutive whole sentences joined into lines of at most ``max_words`` words (-1: one line); a longer
    sentence is cut at the limit."""
    if max_words < 1:
        return [([w for s in sentences for w in s[0]], [t for s in sentences for t in s[1]])] if sentences else []
    lines, words, labels = [], [], []
    for sentence_words, sentence_labels in sentences:
        if words and len(words) + len(sentence_words) > max_words:
            lines.append((words, labels))
            words, labels = [], []
        words, labels = words + sentence_words, labels + sentence_labels
        while len(words) > max_words:
            lines.append((words[:max_words], labels[:max_words]))
            words, labels = words[max_words:], labels[max_words:]
    if words:
        lines.append((words, labels))
    return lines


def pieces(items: list, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)] or [items]


class PunctCapitHeads(nn.Module):
    def __init__(self, hidden: int, punct: int, capit: int, punct_layers: int, capit_layers: int,
                 punct_dropout: float, capit_dropout: float, activation: str):
        super().__init__()
        self.punct = TokenClassifier(hidden, punct, punct_layers, punct_dropout, activation)
        self.capit = TokenClassifier(hidden, capit, capit_layers, capit_dropout, activation)

    def forward(self, hidden, attention_mask):
        return self.punct(hidden, attention_mask), self.capit(hidden, attention_mask)


class PunctCapitReport(Evaluator):
    """NeMo's "Punctuation report" and "Capitalization report" (word level)."""

    def __init__(self, lines, punct, capit, labels: dict, batch_size: int, tokenizer, max_length: int):
        self.lines, self.punct, self.capit, self.labels = lines, punct, capit, labels
        self.batch_size, self.tokenizer, self.max_length = batch_size, tokenizer, max_length

    def run(self, predictor):
        punct_names, capit_names = self.labels["punct"], self.labels["capit"]
        punct_predicted: list[list[int]] = [[] for _ in self.lines]
        capit_predicted: list[list[int]] = [[] for _ in self.lines]
        for rows, (punct_logits, capit_logits) in batches_by_length(self.lines, self.batch_size, predictor):
            batch = [self.lines[i] for i in rows]
            p = batch_word_predictions(self.tokenizer, batch, punct_logits, self.max_length, punct_names.index("O"))
            c = batch_word_predictions(self.tokenizer, batch, capit_logits, self.max_length, capit_names.index("O"))
            for index, p_row, c_row in zip(rows, p, c):
                punct_predicted[index], capit_predicted[index] = p_row, c_row
        flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
        punct = label_report(flat(self.punct), flat(punct_predicted), punct_names)
        capit = label_report(flat(self.capit), flat(capit_predicted), capit_names)
        return {"punctuation": punct, "capitalization": capit, "words": len(flat(self.punct)),
                "source": predictor.source}

    def summary(self, report):
        punct, capit = report["punctuation"]["per_label"], report["capitalization"]["per_label"]
        values = {f"punct_f1_{SUMMARY_NAMES.get(name, name)}": v["f1"] for name, v in punct.items() if name != "O"}
        values["capit_f1"] = capit.get("U", {}).get("f1", 0.0)
        values["joint"] = (float(np.mean([v for k, v in values.items() if k.startswith("punct_f1_")]))
                           + values["capit_f1"]) / 2
        return values

    def write(self, report, out_dir):
        echo("Punctuation report\n" + format_table(report["punctuation"], "punctuation"))
        echo("\nCapitalization report\n" + format_table(report["capitalization"], "capitalization"))
        summary = self.summary(report)
        echo("\n" + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()) + f" on {report['words']} words")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "results.json", json.dumps({**report, "summary": summary}, indent=1))
        echo(f"Wrote {out_dir / 'results.json'}")


class PunctuationCapitalizationTask(NLPTask):
    name = "punctuation_and_capitalization"
    spec_module = "taoctl.tasks.punctuation_and_capitalization.spec"
    data_dir_fields = ("data_dir", "model.dataset.data_dir")
    data_dir_holds = "text_*.txt and labels_*.txt, from dataset_convert"

    def labels(self, run):
        model = run.spec.model
        labels = {}
        for key, mapping in (("punct", model.punct_label_ids), ("capit", model.capit_label_ids)):
            names = [name for name, _ in sorted(mapping.items(), key=lambda item: item[1])]
            if sorted(mapping.values()) != list(range(len(mapping))) or "O" not in mapping:
                raise TaoctlError(f"model.{key}_label_ids must number its labels 0..{len(mapping) - 1} and hold O")
            labels[key] = names
        return labels

    def head_config(self, run):
        model = run.spec.model
        return {"punct_layers": model.punct_head.punct_num_fc_layers, "capit_layers": model.capit_head.capit_num_fc_layers,
                "punct_dropout": model.punct_head.fc_dropout, "capit_dropout": model.capit_head.fc_dropout,
                "activation": model.punct_head.activation}

    def build_heads(self, run, hidden, labels):
        return PunctCapitHeads(hidden, len(labels["punct"]), len(labels["capit"]), **self.head_config(run))

    def heads_from_manifest(self, manifest, hidden):
        labels = manifest["labels"]
        return PunctCapitHeads(hidden, len(labels["punct"]), len(labels["capit"]), **manifest["heads"])

    def output_names(self, manifest):
        return ("punct_logits", "capit_logits")

    def read_split(self, run, section, what: str, labels: dict, max_length: int):
        """Word lists with punctuation and capitalisation label ids, cut into pieces of half max_length words."""
        if not section.text_file or not section.labels_file:
            raise TaoctlError(f"{what}.text_file and {what}.labels_file must both be set")
        combined = [p + c for p in labels["punct"] for c in labels["capit"]]
        lines, ids = read_word_files(self.in_data_dir(run.spec, section.text_file),
                                     self.in_data_dir(run.spec, section.labels_file), combined, what)
        lines, ids = limit(lines, section.num_samples), limit(ids, section.num_samples)
        size, capits = max(max_length // 2, 1), len(labels["capit"])
        words, punct, capit = [], [], []
        for line, row in zip(lines, ids):
            for chunk_words, chunk_ids in zip(pieces(line, size), pieces(row, size)):
                words.append(chunk_words)
                punct.append([i // capits for i in chunk_ids])
                capit.append([i % capits for i in chunk_ids])
        return words, punct, capit

    def train_data(self, run):
        prepared = self.prepare(run)
        labels = prepared["labels"]
        what, length = prepared["what"], prepared["max_length"]
        words, punct, capit = self.read_split(run, prepared["section"], what, labels, length)
        validation = None
        validation_ds = run.spec.validation_ds
        if validation_ds.text_file and self.in_data_dir(run.spec, validation_ds.text_file).is_file():
            validation = self.read_split(run, validation_ds, "validation_ds", labels, length)
        tokenizer = prepared["tokenizer"]
        encoding = tokenize_words(tokenizer, words, length)
        extra = not run.spec.model.dataset.ignore_extra_tokens
        punct_rows, capit_rows = word_label_rows(encoding, punct, extra), word_label_rows(encoding, capit, extra)
        features = [{"input_ids": encoding["input_ids"][i], "attention_mask": encoding["attention_mask"][i],
                     "token_type_ids": encoding["token_type_ids"][i], "punct_labels": punct_rows[i],
                     "capit_labels": capit_rows[i]} for i in range(len(words))]
        run.echo(f"{what}: {len(words)} lines of at most {max(length // 2, 1)} words, "
                 f"{sum(len(w) for w in words)} words")
        return TrainData(self.train_loader(run, prepared, features), validation=validation,
                         sample_texts=[" ".join(w) for w in words], **prepared)

    def training_step(self, run, model, data):
        def step(net, batch):
            punct_logits, capit_logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            punct = nn.functional.cross_entropy(punct_logits.flatten(0, 1), batch["punct_labels"].flatten())
            capit = nn.functional.cross_entropy(capit_logits.flatten(0, 1), batch["capit_labels"].flatten())
            return punct + capit, {"punct_loss": float(punct.detach()), "capit_loss": float(capit.detach())}

        return step

    def validation(self, run, data):
        if data.validation is None:
            return None
        words, punct, capit = data.validation
        return Validation(PunctCapitReport(words, punct, capit, data.labels, run.spec.validation_ds.batch_size,
                                           data.tokenizer, data.max_length), best_metric="joint", mode="max")

    def preprocess(self, manifest):
        tokenizer = self.manifest_tokenizer(manifest)
        length = manifest["max_seq_length"]
        return lambda lines: self.encode(tokenizer, [l.split() if isinstance(l, str) else l for l in lines], length)

    def evaluator(self, run, manifest):
        words, punct, capit = self.read_split(run, run.spec.test_ds, "test_ds", manifest["labels"],
                                              manifest["max_seq_length"])
        return PunctCapitReport(words, punct, capit, manifest["labels"],
                                run.flags.get("batch_size") or run.spec.test_ds.batch_size,
                                self.manifest_tokenizer(manifest), manifest["max_seq_length"])

    def infer(self, run, predictor):
        """Each query's text restored: its words cleaned as dataset_convert does, then punctuated and capitalised."""
        manifest = predictor.manifest
        labels, tokenizer = manifest["labels"], self.manifest_tokenizer(manifest)
        results = []
        queries = [[w for token in query.split() for w in label_token(token)[0]] for query in run.spec.input_batch]
        for batch in self.batches(queries, 32):
            punct_logits, capit_logits = predictor(batch)
            punct = batch_word_predictions(tokenizer, batch, punct_logits, manifest["max_seq_length"],
                                           labels["punct"].index("O"))
            capit = batch_word_predictions(tokenizer, batch, capit_logits, manifest["max_seq_length"],
                                           labels["capit"].index("O"))
            for words, p_row, c_row in zip(batch, punct, capit):
                restored = " ".join((w[:1].upper() + w[1:] if labels["capit"][c] == "U" else w)
                                    + ("" if labels["punct"][p] == "O" else labels["punct"][p])
                                    for w, p, c in zip(words, p_row, c_row))
                results.append({"query": " ".join(words), "result": restored})
                echo(f"Query: {' '.join(words)}\nResult: {restored}")
        self.write_infer_results(run, results)

    # ------------------------------------------------------------------ dataset_convert
    def dataset_convert(self, run):
        """Raw text files (a paragraph or sentence a line) -> ``text_<file>`` and ``labels_<file>``, written together."""
        spec = run.spec
        source, target = Path(spec.source_data_dir), Path(spec.target_data_dir)
        outputs = [target / f"{kind}_{name}" for name in spec.list_of_file_names for kind in ("text", "labels")]
        refuse_overwrites([(f"source_data_dir file {name}", source / name) for name in spec.list_of_file_names],
                          [(str(path), path) for path in outputs])
        aliases = dict(spec.mark_aliases)
        wrong = {k: v for k, v in aliases.items() if len(k) != 1 or k.isalnum() or v not in MARKS}
        if wrong:
            raise TaoctlError(f"mark_aliases: {wrong} -- each key is one punctuation character, each value one of "
                              f"{' '.join(MARKS)}")
        converted = {}
        for name in spec.list_of_file_names:
            lines = []
            for line in read_lines(source / name, "source_data_dir file"):
                lines += windows(convert_line(line, aliases), spec.max_words_per_line)
            converted[name] = lines
        with atomic_paths() as stage:
            for name, lines in converted.items():
                stage(target / f"text_{name}").write_text("".join(" ".join(w) + "\n" for w, _ in lines))
                stage(target / f"labels_{name}").write_text("".join(" ".join(l) + "\n" for _, l in lines))
        for name, lines in converted.items():
            counts = {}
            for _, row in lines:
                for label in row:
                    counts[label[0]] = counts.get(label[0], 0) + 1
            echo(f"{source / name}: {len(lines)} lines, {sum(len(w) for w, _ in lines)} words "
                 f"({', '.join(f'{k!r} {v}' for k, v in sorted(counts.items()))}) -> {target / f'text_{name}'}, "
                 f"{target / f'labels_{name}'}")


TASK = PunctuationCapitalizationTask()
