"""Training throughput of the conversational NLP tasks vs a bare transformers loop, side by side in one run
(prints examples/s and ratios, asserts nothing; issue 15's target: >= 0.9x).

    .venv/bin/python bench/bench_nlp_training.py --data ../shared/data --pc_data runs/pc/data \
        [--train_samples 128] [--tasks token_classification question_answering ...]

Per task, on its real training set (WNUT-17, SNIPS, Gutenberg after dataset_convert, XQuAD):

- taoctl: the task's own ``train_data`` (reading, tokenisation, label alignment, loader), model and
  training step under the engine's Trainer, as ``train`` runs them;
- bare: the same encoder from transformers fed the same loader's batches in a plain loop
  (forward, loss, backward, AdamW step) -- AutoModelForTokenClassification for WNUT,
  AutoModelForQuestionAnswering for XQuAD, and for the two joint tasks, which transformers has no
  model class for, AutoModel with one linear layer per output (pooled [CLS] for intents, tokens
  for slots, punctuation and capitalisation).

Same examples, batch size (the default spec's), order and learning rate; each side's second epoch
is timed (the first warms up). text_classification's comparison, with the bare loop tokenising each
batch itself, is in bench_text_classification.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from taoctl.engine.spec import load, parse_overrides
from taoctl.engine.task import Run
from taoctl.engine.trainer import Trainer
from taoctl.tasks.nlp_common import encoder as lm
from timing import bare_loop_rate

TASKS = {
    # task: training overrides given the data folder and punctuation_and_capitalization's converted data
    "token_classification": lambda d, _: [f"data_dir={d / 'wnut17'}"],
    "intent_slot_classification": lambda d, _: [f"data_dir={d / 'snips'}"],
    "punctuation_and_capitalization": lambda d, pc: [f"data_dir={pc}", "validation_ds.text_file=null"],
    "question_answering": lambda d, _: [f"training_ds.file={d / 'xquad_en' / 'train.json'}"],
}
LEARNING_RATE = 5e-5


class JointHeads(nn.Module):
    """A transformers encoder with one linear layer per target: the bare form of a two-headed task.

    ``heads``: batch key -> (classes, pooled); a pooled head reads the [CLS] vector, the others every token.
    """

    def __init__(self, encoder, heads: dict[str, tuple[int, bool]]):
        super().__init__()
        self.encoder = encoder
        self.pooled = {key: pooled for key, (_, pooled) in heads.items()}
        self.heads = nn.ModuleDict({key: nn.Linear(encoder.config.hidden_size, classes)
                                    for key, (classes, _) in heads.items()})

    def forward(self, batch):
        hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"]).last_hidden_state
        loss = 0.0
        for key, head in self.heads.items():
            logits = head(hidden[:, 0] if self.pooled[key] else hidden)
            loss = loss + nn.functional.cross_entropy(logits.flatten(0, -2), batch[key].flatten(), ignore_index=-100)
        return loss


def bare_model(name: str, data):
    library = lm.transformers()
    folder = str(lm.offline_default_folder())
    if name == "token_classification":
        model = library.AutoModelForTokenClassification.from_pretrained(folder, num_labels=len(data.labels["tags"]))
        return lambda batch: model(**batch).loss, model
    if name == "question_answering":
        model = library.AutoModelForQuestionAnswering.from_pretrained(folder)
        return lambda batch: model(**batch).loss, model
    encoder = library.AutoModel.from_pretrained(folder)
    if name == "intent_slot_classification":
        heads = {"intent_label": (len(data.labels["intents"]), True), "slot_labels": (len(data.labels["slots"]), False)}
    else:
        heads = {"punct_labels": (len(data.labels["punct"]), False), "capit_labels": (len(data.labels["capit"]), False)}
    model = JointHeads(encoder, heads)
    return model, model


def throughput(name: str, overrides: list[str], samples: int) -> tuple[float, float, int]:
    """Examples per second of the second epoch (taoctl, bare) and the batch size."""
    task = importlib.import_module(f"taoctl.tasks.{name}.task").TASK
    spec_file = Path(task.spec.__file__).parent / "specs" / "train.yaml"
    run = Run("train", {}, spec_path=str(spec_file))
    limits = [f"training_ds.num_samples={samples}", "trainer.max_epochs=2"]
    run.spec = load(spec_file, task.spec.KINDS["experiment"], subtask="train",
                    overrides=parse_overrides([*overrides, *limits]))
    torch.manual_seed(0)
    data = task.train_data(run)
    examples = len(data.loader.dataset)
    model = task.build_model(run, data)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE), data.loader,
                          task.training_step(run, model, data), tmp, 2, "bench", {"task": name},
                          progress_interval_s=1e9)
        trainer.train()
        taoctl_rate = examples / trainer.history[-1]["time_per_epoch"]

    loss_of, bare = bare_model(name, data)
    bare_rate = bare_loop_rate(bare, lambda: data.loader, loss_of, LEARNING_RATE, examples)
    return taoctl_rate, bare_rate, run.spec.training_ds.batch_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="../shared/data")
    parser.add_argument("--pc_data", type=Path, help="punctuation_and_capitalization's dataset_convert output "
                                                     "(without it that task is left out)")
    parser.add_argument("--train_samples", type=int, default=128)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.train_samples} examples per task, "
          f"AdamW lr {LEARNING_RATE}", flush=True)
    for name in args.tasks:
        if name == "punctuation_and_capitalization" and args.pc_data is None:
            print(f"  {name}: left out (no --pc_data)")
            continue
        taoctl_rate, bare_rate, batch = throughput(name, TASKS[name](args.data, args.pc_data), args.train_samples)
        print(f"  {name:<31} batch {batch:>2}: taoctl {taoctl_rate:6.1f} ex/s, bare {bare_rate:6.1f} ex/s: "
              f"{taoctl_rate / bare_rate:.2f}x (target >= 0.9x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
