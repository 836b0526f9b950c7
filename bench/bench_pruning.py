"""The classification pruning table, measured in one run through the real CLI (asserts nothing).

    .venv/bin/python bench/bench_pruning.py --base runs/ants_bees/train/weights/mobilenet_v2_010.tlt \
        --retrain_spec specs/classification/mobilenet_v2_ants_bees_retrain.txt --out runs/ants_bees/pruning \
        --common "-pg 8 -el features.0 features.1 features.2 features.3" \
        --row "-pth 0.5" --row "-pth 0.4 --criterion L2_bn --cal_image_dir ../shared/data/ants_bees/train"

For the base and every --row (prune flags added to --common): `taoctl classification prune`, evaluate
right after pruning, retrain with --retrain_spec (its pretrained_model_path replaced by the pruned
file), evaluate again; then eager PyTorch and ONNX fp32 latency at batch 16 of every model, medians
of --repeats runs taken in turns, --threads threads on each side. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_classification import eager_runner, export_fp32, load_images, onnx_runner, paired_medians
from taoctl.engine import modelfile
from taoctl.tasks.classification import common
from taoctl.tasks.classification.task import TASK

TAOCTL = [sys.executable, "-m", "taoctl.launcher.cli"]


def taoctl(*args: str) -> str:
    result = subprocess.run([*TAOCTL, "classification", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"taoctl classification {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def top1(spec: Path, model: Path, out: Path) -> float:
    taoctl("evaluate", "-e", str(spec), "-m", str(model), "-r", str(out))
    return json.loads((out / "results.json").read_text())["top1_accuracy"]


def sides(model_path: Path, images, work: Path) -> tuple:
    """(eager, ONNX fp32) sides for paired_medians, each running one batch of 16."""
    model, manifest = TASK.load_model(model_path)
    x16 = common.normalizer_from_manifest(manifest).numpy(images)
    path = work / f"{len(list(work.iterdir()))}.onnx"
    export_fp32(model, manifest, path, x16)
    return (eager_runner, (model_path, None, x16)), (onnx_runner, (path, x16))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="the trained, unpruned .tlt")
    parser.add_argument("--retrain_spec", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--common", default="", help="prune flags shared by every row")
    parser.add_argument("--row", action="append", required=True, help="prune flags of one row (repeatable)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    spec_text = args.retrain_spec.read_text()
    if not re.search(r'pretrained_model_path:\s*"[^"]*"', spec_text):
        raise SystemExit(f"{args.retrain_spec}: no pretrained_model_path to replace")
    val = re.search(r'val_dataset_path:\s*"([^"]*)"', spec_text).group(1)
    _, manifest = TASK.load_model(args.base)
    images = load_images(val, tuple(manifest["input_shape"]), 16)

    base_top1 = top1(args.retrain_spec, args.base, args.out / "eval_base")
    rows, finals = [], []
    for i, flags in enumerate(args.row):
        pruned = args.out / f"pruned_{i}.tlt"
        taoctl("prune", "-m", str(args.base), "-o", str(pruned), *shlex.split(args.common), *shlex.split(flags))
        record = modelfile.load_model(pruned).manifest["pruning"]
        after_prune = top1(args.retrain_spec, pruned, args.out / f"eval_pruned_{i}")
        spec = args.out / f"retrain_{i}.txt"
        spec.write_text(re.sub(r'pretrained_model_path:\s*"[^"]*"', f'pretrained_model_path: "{pruned}"', spec_text))
        run = args.out / f"retrain_{i}"
        taoctl("train", "-e", str(spec), "-r", str(run), "--force")
        final = sorted((run / "weights").glob("*.tlt"))[-1]
        rows.append((flags, record, after_prune, top1(spec, final, args.out / f"eval_retrain_{i}")))
        finals.append(final)
        print(f"measured `{flags}`: {after_prune:.2%} after pruning, {rows[-1][3]:.2%} after retraining", flush=True)

    # Latencies last, every model taking turns, so that all see the same machine.
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, path in [("base", args.base)] + [(str(i), f) for i, f in enumerate(finals)]:
            runs[f"{name} eager"], runs[f"{name} onnx"] = sides(path, images, Path(tmp))
        seconds, _ = paired_medians(runs, args.repeats, args.threads)
    base_eager, base_onnx = seconds["base eager"], seconds["base onnx"]
    params_before, macs_before = rows[0][1]["params_before"], rows[0][1]["macs_before"]
    print("\n| prune flags | params | MACs | top-1 after pruning | top-1 after retraining | eager batch 16 | "
          "ONNX fp32 batch 16 |\n| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| (unpruned) | {params_before:,} | {macs_before / 1e6:.1f} M | {base_top1:.2%} | – | "
          f"{base_eager * 1000:.1f} ms | {base_onnx * 1000:.1f} ms |")
    for i, (flags, record, after_prune, after_retrain) in enumerate(rows):
        eager, onnx = seconds[f"{i} eager"], seconds[f"{i} onnx"]
        print(f"| `{flags}` | {record['params_after']:,} ({record['params_after'] / params_before:.1%}) | "
              f"{record['macs_after'] / 1e6:.1f} M ({record['macs_after'] / macs_before:.1%}) | "
              f"{after_prune:.2%} | {after_retrain:.2%} | {eager * 1000:.1f} ms ({base_eager / eager:.2f}x) | "
              f"{onnx * 1000:.1f} ms ({base_onnx / onnx:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
