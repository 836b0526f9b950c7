"""text_classification's YAML spec: TAO 3.x's keys (../shared/reference/TAO_CONVERSATIONAL.md, section 3).

One schema serves train.yaml, finetune.yaml, evaluate.yaml, infer.yaml and export.yaml (what
``download_specs`` writes); each subtask requires its own keys.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from taoctl.engine.spec import SpecKind, at_least, fraction
from taoctl.engine.spec import load as _load
from taoctl.tasks.nlp_common.sections import (RANGES, DataLoader, LanguageModel, NeMoExperiment, Optim, Tokenizer,
                                          loader_ranges)


@dataclasses.dataclass
class Dataset:
    num_classes: int | None = None
    do_lower_case: bool = False
    max_seq_length: int = 256
    class_balancing: Literal["weighted_loss"] | None = None
    use_cache: bool = False


@dataclasses.dataclass
class ClassLabels:
    class_labels_file: str | None = None


@dataclasses.dataclass
class ClassifierHead:
    num_output_layers: int = 2
    fc_dropout: float = 0.1


@dataclasses.dataclass
class Model:
    dataset: Dataset = dataclasses.field(default_factory=Dataset)
    class_labels: ClassLabels = dataclasses.field(default_factory=ClassLabels)
    tokenizer: Tokenizer = dataclasses.field(default_factory=Tokenizer)
    language_model: LanguageModel = dataclasses.field(default_factory=LanguageModel)
    classifier_head: ClassifierHead = dataclasses.field(default_factory=ClassifierHead)
    infer_samples: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TextFile(DataLoader):
    file_path: str | None = None


def _shuffled() -> TextFile:
    return TextFile(shuffle=True)


@dataclasses.dataclass
class Experiment(NeMoExperiment):
    model: Model = dataclasses.field(default_factory=Model)
    training_ds: TextFile = dataclasses.field(default_factory=_shuffled)
    validation_ds: TextFile = dataclasses.field(default_factory=TextFile)
    test_ds: TextFile = dataclasses.field(default_factory=TextFile)
    finetuning_ds: TextFile = dataclasses.field(default_factory=_shuffled)
    optim: Optim = dataclasses.field(default_factory=Optim)


KINDS = {
    "experiment": SpecKind(
        "experiment", schema=Experiment,
        required_for={"train": ("training_ds.file_path", "model.dataset.num_classes"),
                      "finetune": ("finetuning_ds.file_path",),
                      "evaluate": ("test_ds.file_path",),
                      "infer": ("input_batch",)},
        paths=("training_ds.file_path", "validation_ds.file_path", "test_ds.file_path", "finetuning_ds.file_path",
               "model.class_labels.class_labels_file"),
        ranges={**RANGES, **loader_ranges("training_ds", "validation_ds", "test_ds", "finetuning_ds"),
                "model.dataset.num_classes": at_least(2), "model.dataset.max_seq_length": at_least(8),
                "model.classifier_head.num_output_layers": at_least(1),
                "model.classifier_head.fc_dropout": fraction}),
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
