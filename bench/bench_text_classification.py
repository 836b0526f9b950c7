"""text_classification on sms_spam, measured side by side in one run (prints figures and ratios, asserts nothing).

    .venv/bin/python bench/bench_text_classification.py --model runs/sms/train/checkpoints/trained-model.tlt \
        --data ../shared/data/sms_spam [--train_samples 512] [--repeats 7]

1. accuracy on dev.tsv: the frozen MiniLM (mean-pooled sentence embeddings) + logistic regression
   baseline vs the fine-tuned --model in PyTorch, its ONNX fp32 and its ONNX int8 (dynamic) export
   (targets: accuracy >= 99.0 %, spam F1 >= 0.96, and above the baseline);
2. training throughput: taoctl's Trainer running text_classification's own data pipeline and step
   vs a bare transformers loop (AutoModelForSequenceClassification, the tokenizer padding each batch,
   AdamW), same encoder, examples, batch size and order (target >= 0.9x); each side's second epoch;
3. latency at batch 1 and 32 on dev sentences: eager PyTorch vs onnxruntime fp32 vs int8 (each side
   alone in its own process, taking turns: bench/timing.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from taoctl.engine import export
from taoctl.engine.task import OnnxPredictor, Run, TorchPredictor
from taoctl.engine.trainer import Trainer
from taoctl.tasks.nlp_common import encoder as lm
from taoctl.tasks.text_classification import spec as tc_spec
from taoctl.tasks.nlp_common.data import read_tsv
from taoctl.tasks.text_classification.task import TASK, ClassificationReport
from timing import bare_loop_rate, paired_medians


def frozen_baseline(data: Path) -> dict:
    """Mean-pooled frozen MiniLM embeddings + logistic regression (what fine-tuning must beat)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    tokenizer = lm.load_tokenizer("all-MiniLM-L6-v2")
    model = lm.transformers().AutoModel.from_pretrained(str(lm.offline_default_folder())).eval()

    def embed(texts):
        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                batch = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                rows.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(rows)

    train_x, train_y = read_tsv(data / "train.tsv", 2, "train")
    dev_x, dev_y = read_tsv(data / "dev.tsv", 2, "dev")
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(embed(train_x), train_y)
    predicted = classifier.predict(embed(dev_x))
    return {"accuracy": float(np.mean(predicted == np.asarray(dev_y))), "spam_f1": float(f1_score(dev_y, predicted))}


def exported(model_path: Path, folder: Path, data_type: str) -> Path:
    model, manifest = TASK.load_model(model_path, None)
    adapter = TASK.export_adapter(Run("export", {}), model, manifest)
    sample = TASK.preprocess(manifest)(TASK.sample_texts(Run("export", {}), manifest, 16))
    out = folder / f"{data_type}.onnx"
    export.export_model(adapter, out, sample, data_type=data_type, quantization="dynamic")
    TASK.after_export(Run("export", {}), manifest, out)
    return out


def accuracy_rows(model_path: Path, data: Path, folder: Path) -> dict:
    texts, labels = read_tsv(data / "dev.tsv", 2, "dev")
    evaluator = ClassificationReport(texts, labels, ["ham", "spam"], 64)
    model, manifest = TASK.load_model(model_path, None)
    rows = {"PyTorch": evaluator.run(TorchPredictor(model, TASK.preprocess(manifest), manifest, str(model_path)))}
    for data_type in ("fp32", "int8"):
        onnx_file = exported(model_path, folder, data_type)
        onnx_manifest = TASK.onnx_manifest(None, onnx_file)
        rows[f"ONNX {data_type}"] = evaluator.run(OnnxPredictor(onnx_file, TASK.preprocess(onnx_manifest),
                                                                onnx_manifest))
    return rows


def training_throughput(data: Path, samples: int, batch: int) -> tuple[float, float]:
    """Examples per second of the second epoch: taoctl's Trainer on the task's pipeline vs a bare loop."""
    spec_file = Path(tc_spec.__file__).parent / "specs" / "train.yaml"
    overrides = [f"training_ds.file_path={data / 'train.tsv'}", "model.dataset.num_classes=2",
                 f"training_ds.num_samples={samples}", f"training_ds.batch_size={batch}", "trainer.max_epochs=2"]
    from taoctl.engine.spec import load, parse_overrides

    run = Run("train", {}, spec_path=str(spec_file))
    run.spec = load(spec_file, tc_spec.KINDS["experiment"], subtask="train", overrides=parse_overrides(overrides))
    results = {}
    torch.manual_seed(0)
    train = TASK.train_data(run)
    model = TASK.build_model(run, train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, optimizer, train.loader, TASK.training_step(run, model, train), tmp, 2, "bench",
                          {"task": TASK.name}, progress_interval_s=1e9)
        trainer.train()
        results["taoctl"] = samples / trainer.history[-1]["time_per_epoch"]

    library = lm.transformers()
    folder = str(lm.offline_default_folder())
    tokenizer = library.AutoTokenizer.from_pretrained(folder)
    bare = library.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    texts, labels = read_tsv(data / "train.tsv", 2, "train")
    texts, labels = texts[:samples], torch.tensor(labels[:samples])

    def batches():  # the tokenizer padding each batch, as a bare transformers loop does
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(0))
        for start in range(0, samples, batch):
            rows = order[start:start + batch]
            inputs = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=128,
                               return_tensors="pt")
            yield inputs, labels[rows]

    results["bare"] = bare_loop_rate(bare, batches, lambda b: bare(**b[0], labels=b[1]).loss, 5e-5, samples)
    return results["taoctl"], results["bare"]


def eager_runner(model_path, texts):
    model, manifest = TASK.load_model(model_path, None)
    inputs = TASK.preprocess(manifest)(texts)
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def run():
        with torch.no_grad():
            model(**tensors)
    return run


def onnx_runner(onnx_file, texts):
    manifest = TASK.onnx_manifest(None, onnx_file)
    inputs = TASK.preprocess(manifest)(texts)
    session = export.ort_session(onnx_file, torch.get_num_threads())
    return lambda: session.run(None, inputs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="folder with train.tsv and dev.tsv (sms_spam)")
    parser.add_argument("--train_samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.threads} threads", flush=True)

    baseline = frozen_baseline(args.data)
    print(f"\n1. dev accuracy ({args.data / 'dev.tsv'})")
    print(f"  frozen MiniLM + logistic regression: accuracy {baseline['accuracy'] * 100:.2f} %, "
          f"spam F1 {baseline['spam_f1']:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = accuracy_rows(args.model, args.data, Path(tmp))
        for name, report in rows.items():
            spam = report["per_label"]["spam"]["f1"]
            print(f"  fine-tuned, {name:<9}: accuracy {report['accuracy'] * 100:.2f} %, spam F1 {spam:.3f} "
                  f"({(report['accuracy'] - baseline['accuracy']) * 100:+.2f} pt vs the baseline)", flush=True)

        taoctl_rate, bare_rate = training_throughput(args.data, args.train_samples, args.batch)
        print(f"\n2. training throughput, batch {args.batch}, {args.train_samples} examples: taoctl "
              f"{taoctl_rate:.1f} ex/s, bare transformers loop {bare_rate:.1f} ex/s: {taoctl_rate / bare_rate:.2f}x "
              f"(target >= 0.9x)", flush=True)

        texts, _ = read_tsv(args.data / "dev.tsv", 2, "dev")
        fp32, int8 = exported(args.model, Path(tmp), "fp32"), exported(args.model, Path(tmp), "int8")
        print("\n3. latency (median ms per call)")
        for batch in (1, 32):
            sample = texts[:batch]
            sides = {"eager": (eager_runner, (args.model, sample)), "onnx fp32": (onnx_runner, (fp32, sample)),
                     "onnx int8": (onnx_runner, (int8, sample))}
            wall, _ = paired_medians(sides, args.repeats, args.threads)
            print(f"  batch {batch:>2}: eager {wall['eager'] * 1e3:.1f}, ONNX fp32 {wall['onnx fp32'] * 1e3:.1f} "
                  f"({wall['eager'] / wall['onnx fp32']:.2f}x eager), ONNX int8 {wall['onnx int8'] * 1e3:.1f} "
                  f"({wall['onnx fp32'] / wall['onnx int8']:.2f}x fp32)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
