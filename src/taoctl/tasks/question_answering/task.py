"""question_answering: extractive QA on SQuAD v1.1/v2.0 JSON (NeMo's QAModel: one linear layer giving start and end
logits per token), on the shared NLP base.

A context longer than ``max_seq_length`` is cut into windows ``doc_stride`` tokens apart; a window
without the answer learns the span at [CLS] (what v2.0's "no answer" is too). Predictions take the
best span over a question's windows among the ``n_best_size`` start and end candidates, at most
``max_answer_length`` tokens; EM and F1 are SQuAD's (lower case, no punctuation or articles).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from pathlib import Path

import numpy as np
from torch import nn

from taoctl.engine.cli import echo
from taoctl.engine.task import Evaluator, TrainData, Validation
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_paths, write_atomic
from taoctl.tasks.nlp_common.data import limit
from taoctl.tasks.nlp_common.heads import TokenClassifier
from taoctl.tasks.nlp_common.task import INPUT_NAMES, NLPTask
from taoctl.tasks.nlp_common.words import batches_by_length

Example = collections.namedtuple("Example", "qid question context answers")


def read_squad(path, what: str, need_answers: bool = True) -> list[Example]:
    """SQuAD JSON's questions; a missing key, or an answer that is not its context's text at ``answer_start``, is
    ``file:line`` (the line of the question's id)."""
    path = Path(path)
    if not path.is_file():
        raise TaoctlError(f"{what}: {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaoctlError(f"{path}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg})") from None

    def where(qid) -> str:
        index = text.find(json.dumps(str(qid)))
        return f"{path}:{text.count(chr(10), 0, index) + 1 if index >= 0 else 1}"

    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaoctlError(f"{path}: not SQuAD JSON (no \"data\" list of articles)")
    examples = []
    for article in data["data"]:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context")
            for qa in paragraph.get("qas", []):
                qid = qa.get("id")
                if not isinstance(context, str) or not isinstance(qa.get("question"), str) or qid is None:
                    raise TaoctlError(f"{where(qid)}: a question needs \"id\", \"question\" and its paragraph's "
                                      f"\"context\"")
                answers = []
                for answer in qa.get("answers", []) or []:
                    start, answer_text = answer.get("answer_start"), answer.get("text")
                    if not isinstance(start, int) or not isinstance(answer_text, str):
                        raise TaoctlError(f"{where(qid)}: question {qid}: an answer needs \"text\" and an integer "
                                          f"\"answer_start\"")
                    if context[start:start + len(answer_text)] != answer_text:
                        raise TaoctlError(f"{where(qid)}: question {qid}: answer {answer_text!r} is not the context's "
                                          f"text at answer_start {start} ({context[start:start + len(answer_text)]!r})")
                    answers.append((answer_text, start))
                if need_answers and not answers and not qa.get("is_impossible", False):
                    raise TaoctlError(f"{where(qid)}: question {qid} has no answers (and is not is_impossible)")
                examples.append(Example(str(qid), qa["question"], context, answers))
    if not examples:
        raise TaoctlError(f"{path}: no questions in it")
    return examples


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_f1(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: list[Example]) -> dict:
    """Exact match and F1 in %, each the best over a question's gold answers (v2.0: "" for no answer)."""
    exact, f1 = [], []
    for example in examples:
        golds = [text for text, _ in example.answers] or [""]
        prediction = predictions.get(example.qid, "")
        exact.append(max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds))
        f1.append(max(answer_f1(prediction, g) for g in golds))
    return {"exact_match": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1)), "total": len(examples)}


class Features:
    """A question's windows over its context: token ids, the window of each example, offsets into the context."""

    def __init__(self, tokenizer, examples: list[Example], dataset, train: bool):
        questions = [self.cut_question(tokenizer, e.question, dataset.max_query_length) for e in examples]
        encoded = tokenizer(questions, [e.context for e in examples], truncation="only_second",
                            max_length=dataset.max_seq_length, stride=dataset.doc_stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True)
        self.example_index = list(encoded["overflow_to_sample_mapping"])
        self.inputs = [{name: encoded[name][i] for name in INPUT_NAMES} for i in range(len(self.example_index))]
        # offsets of context tokens only; None elsewhere (question, special tokens)
        self.offsets = [[offset if sequence == 1 else None for offset, sequence in
                         zip(encoded["offset_mapping"][i], encoded.sequence_ids(i))]
                        for i in range(len(self.example_index))]
        if train:
            self.positions = [self.answer_position(self.offsets[i], examples[self.example_index[i]])
                              for i in range(len(self.example_index))]

    @staticmethod
    def cut_question(tokenizer, question: str, max_tokens: int) -> str:
        """The question cut to ``max_query_length`` tokens, at a token boundary (NeMo's max_query_length)."""
        encoded = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        return question if len(offsets) <= max_tokens else question[:offsets[max_tokens - 1][1]]

    @staticmethod
    def answer_position(offsets, example: Example) -> tuple[int, int]:
        """The first answer's token span in this window, or (0, 0) ([CLS]) when the window does not hold it."""
        if not example.answers:
            return 0, 0
        text, start = example.answers[0]
        end = start + len(text)
        context = [i for i, o in enumerate(offsets) if o is not None]
        if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
            return 0, 0
        first = next(i for i in context if offsets[i][1] > start)
        last = next(i for i in reversed(context) if offsets[i][0] < end)
        return first, last


def best_answers(examples, features: Features, starts, ends, dataset) -> tuple[dict, dict]:
    """Per question, the best span over its windows and the n-best list (TAO's prediction.txt and nbest.txt)."""
    by_example = collections.defaultdict(list)
    for feature, example in enumerate(features.example_index):
        by_example[example].append(feature)
    predictions, nbest = {}, {}
    for index, example in enumerate(examples):
        candidates, null_score = [], None
        for feature in by_example[index]:
            start_logits, end_logits, offsets = starts[feature], ends[feature], features.offsets[feature]
            null = float(start_logits[0] + end_logits[0])
            null_score = null if null_score is None else min(null_score, null)
            top_starts = np.argsort(start_logits[:len(offsets)])[::-1][:dataset.n_best_size]
            top_ends = np.argsort(end_logits[:len(offsets)])[::-1][:dataset.n_best_size]
            for s in top_starts:
                for e in top_ends:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > dataset.max_answer_length:
                        continue
                    candidates.append((float(start_logits[s] + end_logits[e]), float(start_logits[s]),
                                       float(end_logits[e]), example.context[offsets[s][0]:offsets[e][1]]))
        candidates.sort(key=lambda c: c[0], reverse=True)
        kept = candidates[:dataset.n_best_size] or [(0.0, 0.0, 0.0, "")]
        scores = np.array([c[0] for c in kept])
        probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        nbest[example.qid] = [{"text": c[3], "probability": float(p), "start_logit": c[1], "end_logit": c[2]}
                              for c, p in zip(kept, probabilities)]
        answer = kept[0][3]
        if dataset.version_2_with_negative and null_score is not None and \
                null_score - kept[0][0] > dataset.null_score_diff_threshold:
            answer = ""
        predictions[example.qid] = answer
    return predictions, nbest


class SquadReport(Evaluator):
    def __init__(self, examples, tokenizer, dataset, batch_size: int):
        self.examples, self.dataset, self.batch_size = examples, dataset, batch_size
        self.features = Features(tokenizer, examples, dataset, train=False)

    def predict(self, predictor):
        starts = [None] * len(self.features.inputs)
        ends = [None] * len(self.features.inputs)
        for rows, (start_logits, end_logits) in batches_by_length(self.features.inputs, self.batch_size, predictor):
            for row, index in enumerate(rows):
                length = len(self.features.inputs[index]["input_ids"])
                starts[index], ends[index] = start_logits[row][:length], end_logits[row][:length]
        return best_answers(self.examples, self.features, starts, ends, self.dataset)

    def run(self, predictor):
        predictions, _ = self.predict(predictor)
        return {**squad_scores(predictions, self.examples), "source": predictor.source}

    def summary(self, report):
        return {"exact_match": report["exact_match"], "f1": report["f1"]}

    def write(self, report, out_dir):
        echo(f"exact match {report['exact_match']:.2f}, f1 {report['f1']:.2f} on {report['total']} questions")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "results.json", json.dumps(report, indent=1))
        echo(f"Wrote {out_dir / 'results.json'}")


class SpanHead(nn.Module):
    """NeMo's QA token classifier: per token, a start and an end logit -> ``(start_logits, end_logits)``."""

    def __init__(self, hidden: int, num_layers: int, dropout: float, activation: str):
        super().__init__()
        self.classifier = TokenClassifier(hidden, 2, num_layers, dropout, activation)

    def forward(self, hidden, attention_mask):
        logits = self.classifier(hidden, attention_mask)
        return logits[..., 0], logits[..., 1]


class QuestionAnsweringTask(NLPTask):
    name = "question_answering"
    spec_module = "taoctl.tasks.question_answering.spec"

    @staticmethod
    def dataset(spec):
        return spec.dataset if spec.dataset is not None else spec.model.dataset

    def max_seq_length(self, spec):
        return self.dataset(spec).max_seq_length

    def labels(self, run):
        return {"span": ["start", "end"]}

    def head_config(self, run):
        head = run.spec.model.token_classifier
        if head.num_classes != 2:
            raise TaoctlError(f"model.token_classifier.num_classes must be 2 (start, end), got {head.num_classes}")
        return {"num_layers": head.num_layers, "dropout": head.dropout, "activation": head.activation,
                "dataset": dataclasses.asdict(self.dataset(run.spec))}

    def build_heads(self, run, hidden, labels):
        head = self.head_config(run)
        return SpanHead(hidden, head["num_layers"], head["dropout"], head["activation"])

    def heads_from_manifest(self, manifest, hidden):
        head = manifest["heads"]
        return SpanHead(hidden, head["num_layers"], head["dropout"], head["activation"])

    def output_names(self, manifest):
        return ("start_logits", "end_logits")

    def int8_agreement(self, fp32, int8):
        same = np.mean([np.argmax(fp32[n], -1) == np.argmax(int8[n], -1) for n in fp32]) * 100
        return f"start/end argmax agrees on {same:.1f} %"

    def manifest_dataset(self, manifest):
        from taoctl.tasks.question_answering.spec import QADataset

        return QADataset(**manifest["heads"]["dataset"])

    def preprocess(self, manifest):
        """Raw inputs: window features (dicts of token ids) or ``[question, context]`` pairs (a first window each)."""
        tokenizer = self.manifest_tokenizer(manifest)
        length = manifest["max_seq_length"]

        def prepare(items):
            items = list(items)
            if items and isinstance(items[0], dict):
                padded = tokenizer.pad({"input_ids": [i["input_ids"] for i in items],
                                        "token_type_ids": [i["token_type_ids"] for i in items],
                                        "attention_mask": [i["attention_mask"] for i in items]}, return_tensors="np")
                return {name: np.asarray(padded[name], dtype=np.int64) for name in INPUT_NAMES}
            return self.encode(tokenizer, [q for q, _ in items], length, pairs=[c for _, c in items])

        return prepare

    def encode(self, tokenizer, texts, max_length, pairs=None):
        if pairs is None:
            return super().encode(tokenizer, texts, max_length)
        encoded = tokenizer(list(texts), list(pairs), padding=True, truncation="only_second", max_length=max_length,
                            return_tensors="np", return_token_type_ids=True)
        return {name: encoded[name].astype(np.int64) for name in INPUT_NAMES}

    # ------------------------------------------------------------------ data and training
    def train_data(self, run):
        prepared = self.prepare(run)
        what, section = prepared["what"], prepared["section"]
        dataset = self.dataset(run.spec) if prepared["finetune_manifest"] is None else \
            self.manifest_dataset(prepared["finetune_manifest"])
        examples = limit(read_squad(section.file, f"{what}.file"), section.num_samples)
        tokenizer = prepared["tokenizer"]
        features = Features(tokenizer, examples, dataset, train=True)
        rows = [{**inputs, "start_positions": start, "end_positions": end}
                for inputs, (start, end) in zip(features.inputs, features.positions)]
        answered = sum(1 for start, _ in features.positions if start > 0)
        run.echo(f"{what}: {len(examples)} questions, {len(rows)} windows ({answered} holding their answer)")
        validation = None
        if run.spec.validation_ds.file:
            validation = limit(read_squad(run.spec.validation_ds.file, "validation_ds.file"),
                               run.spec.validation_ds.num_samples)
        return TrainData(self.train_loader(run, prepared, rows), validation=validation, dataset=dataset,
                         sample_texts=[[e.question, e.context] for e in examples], **prepared)

    def training_step(self, run, model, data):
        def step(net, batch):
            starts, ends = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = (nn.functional.cross_entropy(starts, batch["start_positions"])
                    + nn.functional.cross_entropy(ends, batch["end_positions"])) / 2
            return loss, {}

        return step

    def validation(self, run, data):
        if data.validation is None:
            return None
        return Validation(SquadReport(data.validation, data.tokenizer, data.dataset,
                                      run.spec.validation_ds.batch_size), best_metric="f1", mode="max")

    # ------------------------------------------------------------------ evaluate / infer
    def evaluator(self, run, manifest):
        examples = limit(read_squad(run.spec.test_ds.file, "test_ds.file"), run.spec.test_ds.num_samples)
        return SquadReport(examples, self.manifest_tokenizer(manifest), self.manifest_dataset(manifest),
                           run.flags.get("batch_size") or run.spec.test_ds.batch_size)

    def infer(self, run, predictor):
        """TAO's infer: "Question:"/"Answer:" lines, prediction.txt ({id: answer}) and nbest.txt in -r."""
        manifest = predictor.manifest
        examples = limit(read_squad(run.spec.infer_ds.file, "infer_ds.file", need_answers=False),
                         run.spec.infer_ds.num_samples)
        report = SquadReport(examples, self.manifest_tokenizer(manifest), self.manifest_dataset(manifest),
                             run.spec.infer_ds.batch_size)
        predictions, nbest = report.predict(predictor)
        for example in examples:
            echo(f"Question: {example.question}\nAnswer: {predictions[example.qid]}")
        out_dir = run.results_dir or Path(run.flags["model_path"]).resolve().parent
        with atomic_paths() as stage:
            stage(out_dir / "prediction.txt").write_text(json.dumps(predictions, indent=1, ensure_ascii=False))
            stage(out_dir / "nbest.txt").write_text(json.dumps(nbest, indent=1, ensure_ascii=False))
        echo(f"Wrote {out_dir / 'prediction.txt'} and {out_dir / 'nbest.txt'}")


TASK = QuestionAnsweringTask()
