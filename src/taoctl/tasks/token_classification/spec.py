"""token_classification's YAML specs: TAO 3.x's keys (../shared/reference/TAO_CONVERSATIONAL.md, section 4).

``data_dir`` sits at the top level, as TAO's command lines set it (``data_dir=/data/ner``); the
fact sheet leaves open whether TAO's own train.yaml nested it, so ``model.dataset.data_dir`` is
read too (the top-level value wins). ``*_ds.text_file``/``labels_file`` are relative to it unless
absolute; ``model.label_ids`` defaults to ``<data_dir>/label_ids.csv``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from taoctl.engine.spec import SpecKind, at_least, fraction
from taoctl.engine.spec import load as _load
from taoctl.tasks.nlp_common.sections import (RANGES, LanguageModel, Optim, Tokenizer, WordDataset, WordExperiment,
                                          loader_ranges)


@dataclasses.dataclass
class Dataset(WordDataset):
    class_balancing: Literal["weighted_loss"] | None = None


@dataclasses.dataclass
class Head:
    num_fc_layers: int = 2
    fc_dropout: float = 0.5
    activation: str = "relu"
    use_transformer_init: bool = True


@dataclasses.dataclass
class Model:
    label_ids: str | None = None
    dataset: Dataset = dataclasses.field(default_factory=Dataset)
    tokenizer: Tokenizer = dataclasses.field(default_factory=Tokenizer)
    language_model: LanguageModel = dataclasses.field(default_factory=LanguageModel)
    head: Head = dataclasses.field(default_factory=Head)


@dataclasses.dataclass
class Experiment(WordExperiment):
    model: Model = dataclasses.field(default_factory=Model)
    optim: Optim = dataclasses.field(default_factory=lambda: Optim(lr=5e-5))


@dataclasses.dataclass
class DatasetConvert:
    source_data_dir: str | None = None
    target_data_dir: str | None = None
    list_of_file_names: list[str] = dataclasses.field(default_factory=lambda: ["train.txt", "dev.txt"])
    train_file_name: str = "train.txt"
    max_length: int = -1


KINDS = {
    "experiment": SpecKind(
        "experiment", schema=Experiment,
        required_for={"train": ("training_ds.text_file",), "finetune": ("finetuning_ds.text_file",),
                      "evaluate": ("test_ds.text_file",), "infer": ("input_batch",)},
        paths=("data_dir", "model.label_ids"),
        ranges={**RANGES, **loader_ranges("training_ds", "validation_ds", "test_ds", "finetuning_ds"),
                "model.dataset.max_seq_length": at_least(8), "model.head.num_fc_layers": at_least(1),
                "model.head.fc_dropout": fraction}),
    "dataset_convert": SpecKind(
        "dataset_convert", schema=DatasetConvert, required=("source_data_dir", "target_data_dir"),
        paths=("source_data_dir",), folders=("source_data_dir",)),
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
