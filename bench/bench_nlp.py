"""The conversational NLP tasks' figures on their real sets, side by side per runtime (prints, asserts nothing).

    .venv/bin/python bench/bench_nlp.py --data ../shared/data \
        [--text_classification runs/sms/train/checkpoints/trained-model.tlt] \
        [--token_classification runs/wnut/train/checkpoints/trained-model.tlt] \
        [--intent_slot_classification runs/snips/train/checkpoints/trained-model.tlt] \
        [--punctuation_and_capitalization runs/pc/train/checkpoints/trained-model.tlt --pc_data runs/pc/data] \
        [--question_answering runs/qa/train/checkpoints/trained-model.tlt]

For every model given: its task's evaluator (the one `evaluate` runs) on the set issue 15 names
(sms_spam dev, WNUT-17 test, SNIPS test, Gutenberg dev, XQuAD dev), through PyTorch, its ONNX fp32
export and its ONNX int8 (dynamic) export, with the seconds each evaluation took (tokenisation and
decoding included, one process, taking turns on the same cores) and the target per metric. For
question answering also SQuAD EM/F1 of two trivial baselines: the context's first sentence, and the
sentence sharing most words with the question.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import tempfile
import time
from pathlib import Path

from taoctl.engine import export
from taoctl.engine.spec import load, parse_overrides
from taoctl.engine.task import Run

TASKS = {
    # task: (evaluate overrides given the data folder, [(summary key, target, label)])
    "text_classification": (lambda d, _: [f"test_ds.file_path={d / 'sms_spam' / 'dev.tsv'}"],
                            [("accuracy", 0.990, "dev accuracy"), ("f1_spam", 0.96, "spam F1")]),
    "token_classification": (lambda d, _: [f"data_dir={d / 'wnut17'}", "test_ds.text_file=text_test.txt",
                                           "test_ds.labels_file=labels_test.txt"],
                             [("f1", 0.45, "test entity F1")]),
    "intent_slot_classification": (lambda d, _: [f"data_dir={d / 'snips'}"],
                                   [("intent_accuracy", 0.985, "test intent accuracy"),
                                    ("slot_f1", 0.94, "test slot F1 (entity)")]),
    "punctuation_and_capitalization": (lambda d, pc: [f"data_dir={pc}"],
                                       [("punct_f1_period", 0.70, "period F1"), ("punct_f1_comma", 0.62, "comma F1"),
                                        ("punct_f1_question", 0.50, "question F1"),
                                        ("capit_f1", 0.83, "capitalisation F1")]),
    "question_answering": (lambda d, _: [f"test_ds.file={d / 'xquad_en' / 'dev.json'}"],
                           [("exact_match", None, "dev EM"), ("f1", 45.0, "dev F1")]),
}


def evaluate(task, run, model_path) -> tuple[dict, float]:
    started = time.perf_counter()
    predictor = task.predictor(run, model_path)
    evaluator = task.evaluator(run, predictor.manifest)
    summary = evaluator.summary(evaluator.run(predictor))
    return summary, time.perf_counter() - started


def exported(task, run, model_path, folder: Path, data_type: str) -> Path:
    model, manifest = task.load_model(model_path, None)
    adapter = task.export_adapter(run, model, manifest)
    sample = task.preprocess(manifest)(task.sample_texts(run, manifest, 16))
    out = folder / f"{task.name}_{data_type}.onnx"
    export.export_model(adapter, out, sample, data_type=data_type, quantization="dynamic")
    task.after_export(run, manifest, out)
    return out


def qa_baselines(dev: Path) -> dict[str, dict]:
    from taoctl.tasks.question_answering.task import read_squad, squad_scores

    examples = read_squad(dev, "dev")
    words = lambda text: set(re.findall(r"\w+", text.lower()))  # noqa: E731
    first, overlap = {}, {}
    for example in examples:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", example.context) if s.strip()]
        first[example.qid] = sentences[0]
        overlap[example.qid] = max(sentences, key=lambda s: len(words(s) & words(example.question)))
    return {"first sentence": squad_scores(first, examples), "longest-overlap sentence": squad_scores(overlap, examples)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="../shared/data")
    parser.add_argument("--pc_data", type=Path, help="punctuation_and_capitalization's dataset_convert output")
    for name in TASKS:
        parser.add_argument(f"--{name}", type=Path, help=f"a trained {name} model file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (overrides, targets) in TASKS.items():
            model_path = getattr(args, name)
            if model_path is None:
                continue
            task = importlib.import_module(f"taoctl.tasks.{name}.task").TASK
            spec_file = Path(task.spec.__file__).parent / "specs" / "evaluate.yaml"
            run = Run("evaluate", {}, spec_path=str(spec_file))
            run.spec = load(spec_file, task.spec.KINDS["experiment"], subtask="evaluate",
                            overrides=parse_overrides(overrides(args.data, args.pc_data)))
            print(f"\n== {name}: {model_path}", flush=True)
            rows = {"PyTorch": evaluate(task, run, model_path)}
            for data_type in ("fp32", "int8"):
                onnx_file = exported(task, run, model_path, Path(tmp), data_type)
                rows[f"ONNX {data_type}"] = evaluate(task, run, onnx_file)
            for runtime, (summary, seconds) in rows.items():
                shown = ", ".join(f"{label} {summary[key]:.4g}" + (f" ({'met' if summary[key] >= target else 'MISSED'}"
                                                                  f" >= {target:g})" if target is not None else "")
                                  for key, target, label in targets)
                print(f"  {runtime:<9} {shown}; {seconds:.1f} s "
                      f"({rows['PyTorch'][1] / seconds:.2f}x PyTorch's speed)", flush=True)
            if name == "question_answering":
                for baseline, scores in qa_baselines(args.data / "xquad_en" / "dev.json").items():
                    print(f"  baseline: {baseline}: EM {scores['exact_match']:.2f}, F1 {scores['f1']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
