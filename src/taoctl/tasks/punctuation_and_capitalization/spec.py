"""punctuation_and_capitalization's YAML specs: TAO 3.x's keys (../shared/reference/TAO_CONVERSATIONAL.md,
section 6). ``data_dir`` holds ``text_<split>.txt`` (lower-case words without punctuation) and
``labels_<split>.txt`` (a 2-character label a word: the punctuation that follows it, then ``U`` or
``O`` for its capitalisation), which ``dataset_convert`` writes from raw text.
"""

from __future__ import annotations

import dataclasses

from taoctl.engine.spec import SpecKind, at_least, fraction
from taoctl.engine.spec import load as _load
from taoctl.tasks.nlp_common.sections import (RANGES, LanguageModel, Optim, Tokenizer, WordDataset, WordExperiment,
                                          loader_ranges)


@dataclasses.dataclass
class PunctHead:
    punct_num_fc_layers: int = 1
    fc_dropout: float = 0.1
    activation: str = "relu"
    use_transformer_init: bool = True


@dataclasses.dataclass
class CapitHead:
    capit_num_fc_layers: int = 1
    fc_dropout: float = 0.1
    activation: str = "relu"
    use_transformer_init: bool = True


@dataclasses.dataclass
class Model:
    punct_label_ids: dict[str, int] = dataclasses.field(default_factory=lambda: {"O": 0, ",": 1, ".": 2, "?": 3})
    capit_label_ids: dict[str, int] = dataclasses.field(default_factory=lambda: {"O": 0, "U": 1})
    dataset: WordDataset = dataclasses.field(default_factory=WordDataset)
    tokenizer: Tokenizer = dataclasses.field(default_factory=Tokenizer)
    language_model: LanguageModel = dataclasses.field(default_factory=LanguageModel)
    punct_head: PunctHead = dataclasses.field(default_factory=PunctHead)
    capit_head: CapitHead = dataclasses.field(default_factory=CapitHead)


@dataclasses.dataclass
class Experiment(WordExperiment):
    model: Model = dataclasses.field(default_factory=Model)
    optim: Optim = dataclasses.field(default_factory=lambda: Optim(lr=1e-5))


@dataclasses.dataclass
class DatasetConvert:
    source_data_dir: str | None = None
    target_data_dir: str | None = None
    list_of_file_names: list[str] = dataclasses.field(default_factory=lambda: ["train.txt", "dev.txt"])
    # taoctl extension: a paragraph is cut into lines of whole sentences of at most this many words
    # (a longer sentence is cut at the limit); -1 keeps each source line whole.
    max_words_per_line: int = 64
    # taoctl extension: marks labelled as one of , . ? instead of being deleted, e.g. {"!": ".", ";": ","}.
    # TAO deleted every other mark (the default, {}): a sentence ending in "!" then ends unlabelled.
    mark_aliases: dict[str, str] = dataclasses.field(default_factory=dict)


KINDS = {
    "experiment": SpecKind(
        "experiment", schema=Experiment,
        required_for={"train": ("training_ds.text_file",), "finetune": ("finetuning_ds.text_file",),
                      "evaluate": ("test_ds.text_file",), "infer": ("input_batch",)},
        paths=("data_dir", "model.dataset.data_dir"),
        ranges={**RANGES, **loader_ranges("training_ds", "validation_ds", "test_ds", "finetuning_ds"),
                "model.dataset.max_seq_length": at_least(16), "model.punct_head.punct_num_fc_layers": at_least(1),
                "model.capit_head.capit_num_fc_layers": at_least(1), "model.punct_head.fc_dropout": fraction,
                "model.capit_head.fc_dropout": fraction}),
    "dataset_convert": SpecKind(
        "dataset_convert", schema=DatasetConvert, required=("source_data_dir", "target_data_dir"),
        paths=("source_data_dir",), folders=("source_data_dir",)),
}


def load(path, kind: str = "experiment", subtask: str | None = None, on_warning=None, overrides=()):
    return _load(path, KINDS[kind], on_warning=on_warning, subtask=subtask, overrides=overrides)
