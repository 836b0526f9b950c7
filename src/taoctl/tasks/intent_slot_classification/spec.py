"""intent_slot_classification's YAML spec: TAO 3.x's keys (../shared/reference/TAO_CONVERSATIONAL.md, section 5).

``data_dir`` holds NeMo's layout: ``dict.intents.csv`` and ``dict.slots.csv`` (a name a line, line
index = id), ``<prefix>.tsv`` (header ``sentence<TAB>label``, then ``query<TAB>intent_id``) and
``<prefix>_slots.tsv`` (a slot id per word). ``model.class_labels`` files are read from ``data_dir``
unless absolute.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from taoctl.engine.spec import SpecKind, at_least, fraction
from taoctl.engine.spec import load as _load
from taoctl.tasks.nlp_common.sections import (RANGES, DataLoader, LanguageModel, NeMoExperiment, Optim, Tokenizer,
                                          loader_ranges)


@dataclasses.dataclass
class ClassLabels:
    intent_labels_file: str = "dict.intents.csv"
    slot_labels_file: str = "dict.slots.csv"


@dataclasses.dataclass
class DataDesc:
    pad_label: str = "O"  # the slot label of words outside every slot (NeMo's none_slot_label)


@dataclasses.dataclass
class IntentSlotLanguageModel(LanguageModel):
    max_seq_length: int = 50


@dataclasses.dataclass
class Head:
    num_output_layers: int = 2
    fc_dropout: float = 0.1


@dataclasses.dataclass
class Model:
    data_dir: str | None = None
    class_labels: ClassLabels = dataclasses.field(default_factory=ClassLabels)
    intent_loss_weight: float = 0.6
    class_balancing: Literal["weighted_loss"] | None = None
    pad_label: int = -1
    ignore_extra_tokens: bool = False
    ignore_start_end: bool = True
    data_desc: DataDesc = dataclasses.field(default_factory=DataDesc)
    tokenizer: Tokenizer = dataclasses.field(default_factory=Tokenizer)
    language_model: IntentSlotLanguageModel = dataclasses.field(default_factory=IntentSlotLanguageModel)
    head: Head = dataclasses.field(default_factory=Head)


@dataclasses.dataclass
class Prefixed(DataLoader):
    prefix: str | None = None


@dataclasses.dataclass
class Experiment(NeMoExperiment):
    data_dir: str | None = None
    model: Model = dataclasses.field(default_factory=Model)
    training_ds: Prefixed = dataclasses.field(default_factory=lambda: Prefixed(prefix="train", shuffle=True,
                                                                                batch_size=32))
    validation_ds: Prefixed = dataclasses.field(default_factory=lambda: Prefixed(prefix="test", batch_size=64))
    test_ds: Prefixed = dataclasses.field(default_factory=lambda: Prefixed(prefix="test", batch_size=64))
    finetuning_ds: Prefixed = dataclasses.field(default_factory=lambda: Prefixed(prefix="train", shuffle=True,
                                                                                  batch_size=32))
    optim: Optim = dataclasses.field(default_factory=Optim)


KINDS = {
    "experiment": SpecKind(
        "experiment", schema=Experiment,
        required_for={"train": ("training_ds.prefix",), "finetune": ("finetuning_ds.prefix",),
                      "evaluate": ("test_ds.prefix",), "infer": ("input_batch",)},
        paths=("data_dir", "model.data_dir"),
        ranges={**RANGES, **loader_ranges("training_ds", "validation_ds", "test_ds", "finetuning_ds"),
                "model.language_model.max_seq_length": at_least(8), "model.head.num_output_layers": at_least(1),
                "model.head.fc_dropout": fraction, "model.intent_loss_weight": fraction}),
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
