"""Classification speed, measured side by side in one run (prints ratios, asserts nothing).

    .venv/bin/python bench/bench_classification.py --model run/weights/mobilenet_v2_010.tlt \
        --images ../shared/data/ants_bees/val [--pruned p1.tlt p2.tlt ...] [--repeats 5]

1. training throughput: taoctl's Trainer (driven by a DataLoader over in-memory tensors) vs a bare
   PyTorch loop on the same model, batch size and tensors, neither augmenting (target >= 0.9x);
2. ONNX fp32 (onnxruntime) vs eager PyTorch at batch 1 and 16 (target >= 3x);
3. ONNX int8 (QDQ, calibrated on --images) vs ONNX fp32 at batch 16 (target >= 1.5x);
4. every --pruned model's eager latency vs the unpruned model's, batch 16.
Latencies are medians over --repeats calls after a warm-up, each model and runtime alone in its own
process, all pinned to the same cores and taking turns, all with the same thread count. Eager PyTorch's latency
includes the kernel time it spends faulting in fresh pages for its activations (printed), the part
that swings most between runs. On a machine other jobs share, PyTorch's OpenMP threads wait on busy
cores and eager latency swings by 100x: read ratios from a quiet machine or use --threads 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from taoctl.engine import export
from taoctl.engine.data import imagefolder
from taoctl.engine.trainer import Trainer
from taoctl.engine.task import Run
from taoctl.tasks.classification import common
from taoctl.tasks.classification.task import INPUT, TASK
from timing import paired_medians


def eager_runner(model_path, key, batch: np.ndarray):
    """Runs one eager PyTorch forward pass of the .tlt model on `batch`."""
    model, _ = TASK.load_model(model_path, key)
    x = torch.from_numpy(batch)

    def run():
        with torch.no_grad():
            model(x)
    return run


def export_fp32(model, manifest, path, sample: np.ndarray) -> None:
    """The product's export of a classification model (its adapter, parity checked on ``sample``)."""
    export.export_model(TASK.export_adapter(Run("export", {}), model, manifest), path, {INPUT: sample})


def onnx_runner(onnx_path, batch: np.ndarray):
    """Runs one onnxruntime pass of the .onnx model on `batch`."""
    session = export.ort_session(onnx_path, torch.get_num_threads())
    return lambda: export.run_onnx(session, batch)


def load_images(folder: str, shape, count: int) -> np.ndarray:
    index = imagefolder.scan_image_folder(folder)
    index.samples = index.samples[:: max(1, len(index.samples) // count)][:count]
    arrays, _, _ = imagefolder.cache_images(index, shape[1:], shape[0], "center")
    while len(arrays) < count:
        arrays += arrays[: count - len(arrays)]
    return np.stack([a.transpose(2, 0, 1) for a in arrays])


def bench_training(model_path, key, images: np.ndarray, batch: int, steps: int) -> tuple[float, float]:
    """(taoctl images/s, bare images/s) for `steps` SGD steps of batch `batch` on the same model."""
    results = {}
    labels = torch.arange(len(images)) % 2
    for name in ("bare", "taoctl"):
        torch.manual_seed(0)
        model, manifest = TASK.load_model(model_path, key)
        model.train()
        normalizer = common.normalizer_from_manifest(manifest)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        count = batch * steps
        # Both sides see the same normalised in-memory tensors, no augmentation: the ratio is the
        # Trainer's own overhead (DataLoader batching, hooks, logging, checkpoint excluded).
        x_all = normalizer(torch.from_numpy(images[:count]))
        y_all = labels[:count]
        if name == "bare":

            def run():
                for i in range(0, count, batch):
                    loss = torch.nn.functional.cross_entropy(model(x_all[i:i + batch]), y_all[i:i + batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

            run()  # warm-up
            started = time.perf_counter()
            run()
            results[name] = count / (time.perf_counter() - started)
        else:
            # The loader yields the bare loop's very slices (batch_size=None: no re-collation). Measured
            # on the 2-core CPU, batches that default_collate stacks from per-sample rows run mobilenet_v2's
            # train step ~30 % slower than slices of one tensor, in a bare loop as much as in the Trainer.
            batches = [(x_all[i:i + batch], y_all[i:i + batch]) for i in range(0, count, batch)]
            loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)

            def loss_fn(net, b):
                x, y = b
                return torch.nn.functional.cross_entropy(net(x), y), {}

            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(model, optimizer, loader, loss_fn, tmp, 2, "bench", manifest, progress_interval_s=1e9)
                trainer.train()
                # Two epochs: the first is the warm-up; the second's time excludes the end-of-epoch checkpoint.
                results[name] = count / trainer.history[-1]["time_per_epoch"]
    return results["taoctl"], results["bare"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True, help="ImageFolder (calibration and latency inputs)")
    parser.add_argument("--pruned", nargs="*", default=[])
    parser.add_argument("-k", "--key", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train_batch", type=int, default=16)
    parser.add_argument("--train_steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for PyTorch and onnxruntime alike (default: PyTorch's); on a shared "
                             "machine fewer threads than cores avoids OpenMP oversubscription")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model, manifest = TASK.load_model(args.model, args.key)
    shape = tuple(manifest["input_shape"])
    normalizer = common.normalizer_from_manifest(manifest)
    images = load_images(args.images, shape, max(64, args.train_batch * args.train_steps))
    x16 = normalizer.numpy(images[:16])
    print(f"model {args.model} ({manifest['arch']['arch']}, input {shape}), torch threads {threads}")

    taoctl_ips, bare_ips = bench_training(args.model, args.key, images, args.train_batch, args.train_steps)
    print(f"train throughput: taoctl {taoctl_ips:.1f} img/s, bare PyTorch {bare_ips:.1f} img/s, "
          f"ratio {taoctl_ips / bare_ips:.2f}x (target >= 0.9x)")

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_fp32(model, manifest, fp32, x16)
        export.quantize_int8(fp32, int8, [{INPUT: normalizer.numpy(images[i:i + 16])} for i in range(0, 64, 16)])
        sides = {}
        for batch in (1, 16):
            sides[f"eager {batch}"] = (eager_runner, (args.model, args.key, x16[:batch]))
            sides[f"fp32 {batch}"] = (onnx_runner, (fp32, x16[:batch]))
        sides["int8 16"] = (onnx_runner, (int8, x16))
        pruned_params = {}
        for i, path in enumerate(args.pruned):
            p_onnx = Path(tmp) / f"pruned_{i}.onnx"
            pruned, pruned_manifest = TASK.load_model(path, args.key)
            pruned_params[path] = sum(p.numel() for p in pruned.parameters())
            export_fp32(pruned, pruned_manifest, p_onnx, x16)
            sides[f"{path} eager"] = (eager_runner, (path, args.key, x16))
            sides[f"{path} fp32"] = (onnx_runner, (p_onnx, x16))
        seconds, kernel = paired_medians(sides, args.repeats, threads)
        for batch in (1, 16):
            eager, onnx_s = seconds[f"eager {batch}"], seconds[f"fp32 {batch}"]
            print(f"batch {batch:2d}: eager {eager * 1000:.1f} ms ({kernel[f'eager {batch}'] * 1000:.0f} ms of it in "
                  f"the kernel), ONNX fp32 {onnx_s * 1000:.1f} ms, ratio {eager / onnx_s:.2f}x (target >= 3x)")
        fp32_s, int8_s = seconds["fp32 16"], seconds["int8 16"]
        print(f"batch 16: ONNX fp32 {fp32_s * 1000:.1f} ms, ONNX int8 {int8_s * 1000:.1f} ms, "
              f"ratio {fp32_s / int8_s:.2f}x (target >= 1.5x)")
        for path in args.pruned:
            pruned_s, p_onnx_s = seconds[f"{path} eager"], seconds[f"{path} fp32"]
            print(f"pruned {path}: {pruned_params[path]:,} params, eager batch 16 {pruned_s * 1000:.1f} ms vs unpruned "
                  f"{seconds['eager 16'] * 1000:.1f} ms (speed-up {seconds['eager 16'] / pruned_s:.2f}x), "
                  f"ONNX fp32 {p_onnx_s * 1000:.1f} ms vs {fp32_s * 1000:.1f} ms ({fp32_s / p_onnx_s:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
