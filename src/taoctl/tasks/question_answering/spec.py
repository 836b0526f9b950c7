"""question_answering's YAML spec: TAO 3.x's keys (../shared/reference/TAO_CONVERSATIONAL.md, section 7).

The fact sheet leaves open whether TAO's QA spec held ``dataset`` at the top level or under ``model``
(NeMo's place); both are read, a top-level ``dataset`` section winning when the spec has one.
"""

from __future__ import annotations

import dataclasses

from taoctl.engine.spec import FieldError, SpecKind, at_least, fraction, non_negative
from taoctl.engine.spec import load as _load
from taoctl.tasks.nlp_common.sections import (RANGES, DataLoader, LanguageModel, NeMoExperiment, Optim, Sched, Tokenizer,
                                          loader_ranges)


@dataclasses.dataclass
class QADataset:
    version_2_with_negative: bool = False
    do_lower_case: bool = True  # the tokenizer's own casing decides; kept for TAO's specs
    doc_stride: int = 128
    max_query_length: int = 64
    max_seq_length: int = 384
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0
    n_best_size: int = 20
    use_cache: bool = True
    num_workers: int = 0


@dataclasses.dataclass
class TokenClassifierHead:
    num_layers: int = 1
    dropout: float = 0.0
    num_classes: int = 2
    activation: str = "relu"
    log_softmax: bool = False
    use_transformer_init: bool = True


@dataclasses.dataclass
class Model:
    dataset: QADataset = dataclasses.field(default_factory=QADataset)
    tokenizer: Tokenizer = dataclasses.field(default_factory=Tokenizer)
    language_model: LanguageModel = dataclasses.field(default_factory=LanguageModel)
    token_classifier: TokenClassifierHead = dataclasses.field(default_factory=TokenClassifierHead)


@dataclasses.dataclass
class SquadFile(DataLoader):
    file: str | None = None


def _file(shuffle: bool = False, batch_size: int = 24):
    return lambda: SquadFile(shuffle=shuffle, batch_size=batch_size)


@dataclasses.dataclass
class Experiment(NeMoExperiment):
    dataset: QADataset | None = None
    model: Model = dataclasses.field(default_factory=Model)
    training_ds: SquadFile = dataclasses.field(default_factory=_file(shuffle=True))
    validation_ds: SquadFile = dataclasses.field(default_factory=_file(batch_size=32))
    test_ds: SquadFile = dataclasses.field(default_factory=_file(batch_size=32))
    infer_ds: SquadFile = dataclasses.field(default_factory=_file(batch_size=32))
    finetuning_ds: SquadFile = dataclasses.field(default_factory=_file(shuffle=True))
    optim: Optim = dataclasses.field(default_factory=lambda: Optim(name="adamw", lr=3e-5, weight_decay=0.0,
                                                                   sched=Sched(name="SquareRootAnnealing",
                                                                               warmup_ratio=0.0)))


def _validate(spec) -> None:
    """A window must hold the question, the special tokens and more context than the stride moves by."""
    where = "dataset" if spec.dataset is not None else "model.dataset"
    dataset = spec.dataset if spec.dataset is not None else spec.model.dataset
    room = dataset.max_seq_length - dataset.max_query_length - 3
    if dataset.doc_stride >= room:
        raise FieldError(f"{where}.doc_stride", f"{where}.doc_stride must be below max_seq_length - max_query_length "
                                                f"- 3 = {room} (a window's context), got {dataset.doc_stride}")


KINDS = {
    "experiment": SpecKind(
        "experiment", schema=Experiment,
        required_for={"train": ("training_ds.file",), "finetune": ("finetuning_ds.file",),
                      "evaluate": ("test_ds.file",), "infer": ("infer_ds.file",)},
        paths=("training_ds.file", "validation_ds.file", "test_ds.file", "infer_ds.file", "finetuning_ds.file"),
        ranges={**RANGES, **loader_ranges("training_ds", "validation_ds", "test_ds", "infer_ds", "finetuning_ds"),
                "model.dataset.max_seq_length": at_least(32), "model.dataset.doc_stride": at_least(1),
                "model.dataset.max_query_length": at_least(1), "model.dataset.max_answer_length": at_least(1),
                "model.dataset.n_best_size": at_least(1), "model.token_classifier.num_layers": at_least(1),
                "model.token_classifier.dropout": fraction, "optim.weight_decay": non_negative},
        validate=_validate),
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
