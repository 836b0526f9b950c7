"""DetectNet_v2 speed and size, measured side by side in one run (prints ratios, asserts nothing).

    .venv/bin/python bench/bench_detectnet.py --model runs/bccd/train/weights/model_020.tlt \
        --images runs/bccd/data/test/images [--pruned p.tlt ...] [--final final.tlt] [--repeats 7]

1. training throughput at the recipe's batch: taoctl's Trainer running detectnet_v2's own step
   (targets rasterised per batch, the cost function) vs a bare PyTorch loop running the same step on
   the same model and in-memory batches (target >= 0.9x), and the process's peak memory (goal <= 4 GB);
2. latency at batch 1 and 8: eager PyTorch fp32 (the deployed module) vs ONNX fp32 vs ONNX INT8
   (calibrated QDQ) in onnxruntime (INT8 target >= 2x fp32 ONNX);
3. every --pruned model: parameters, MACs, eager and ONNX fp32 latency vs the unpruned model's
   (target >= 1.5x ONNX at batch 1 and 8 for <= 50 % of the MACs);
4. --final (the pruned + QAT or PTQ model of the seed's sequence) against the first model: parameters,
   file size of the deployed INT8 ONNX vs the .tlt, throughput of INT8 ONNX vs eager fp32 at batch 8.
Latencies: medians over --repeats calls, each side alone in its own process, all taking turns on the
same cores with the same thread count (bench/timing.py). Read ratios from a quiet machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from taoctl.engine import export
from taoctl.engine.detection import images as det_images
from taoctl.engine.pruning import count_macs_params
from taoctl.engine.task import Run
from taoctl.engine.trainer import Trainer
from taoctl.tasks.detectnet_v2 import data as dn_data
from taoctl.tasks.detectnet_v2 import model as dn_model
from taoctl.tasks.detectnet_v2 import targets
from taoctl.tasks.detectnet_v2.encoding import STRIDE
from taoctl.tasks.detectnet_v2.task import INPUT, TASK, to_input
from timing import paired_medians


def eager_runner(model_path, batch: np.ndarray):
    model, _ = TASK.load_model(model_path, None)
    deployed = dn_model.Deployed(model).eval()
    x = torch.from_numpy(to_input(batch))

    def run():
        with torch.no_grad():
            deployed(x)
    return run


def onnx_runner(onnx_path, batch: np.ndarray):
    session = export.ort_session(onnx_path, torch.get_num_threads())
    x = to_input(batch)
    return lambda: export.run_onnx(session, x)


def export_onnx(model_path, path, images: np.ndarray, data_type: str = "fp32") -> None:
    """The product's export (the task's adapter, parity checked; INT8 calibrated on ``images``)."""
    model, manifest = TASK.load_model(model_path, None)
    adapter = TASK.export_adapter(Run("export", {}), model, manifest)
    calibration = [{INPUT: to_input(images[i:i + 8])} for i in range(0, len(images), 8)]
    export.export_model(adapter, path, {INPUT: to_input(images[:8])}, data_type=data_type,
                        calibration=calibration if data_type == "int8" else None)


def bench_training(model_path, frames, classes, spec_path, batch: int, steps: int) -> tuple[float, float]:
    """(taoctl images/s, bare images/s) for ``steps`` Adam steps of ``batch`` images through detectnet_v2's step."""
    from taoctl.tasks.detectnet_v2 import spec as dn_spec
    from taoctl.tasks.detectnet_v2.loss import DetectNetLoss

    spec = dn_spec.load(spec_path)
    raster, deadzone = targets.rasterizer_configs(spec, classes)
    _, manifest = TASK.load_model(model_path, None)
    _, height, width = manifest["input_shape"]
    count = batch * steps
    images, boxes, labels = dn_data.load_eval_samples(frames[:count], classes, width, height)
    batches = [(torch.from_numpy(images[i:i + batch]), [torch.from_numpy(b).float() for b in boxes[i:i + batch]],
                [torch.from_numpy(c).long() for c in labels[i:i + batch]]) for i in range(0, count, batch)]
    results = {}
    for name in ("bare", "taoctl"):
        torch.manual_seed(0)
        model, _ = TASK.load_model(model_path, None)
        model.train()
        loss = DetectNetLoss(spec.cost_function_config, classes)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(net, b):
            x, box, cls = b
            cov, bbox = net(x.float() / 255.0)
            wanted = targets.rasterize(box, cls, len(classes), height // STRIDE, width // STRIDE, raster, deadzone)
            return loss(cov, bbox, wanted, from_logits=True)

        if name == "bare":
            def run():
                for b in batches:
                    value, _ = step(model, b)
                    optimizer.zero_grad(set_to_none=True)
                    value.backward()
                    optimizer.step()

            run()  # warm-up
            started = time.perf_counter()
            run()
            results[name] = count / (time.perf_counter() - started)
        else:
            loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(model, optimizer, loader, step, tmp, 2, "bench", manifest, progress_interval_s=1e9)
                trainer.train()
                # Two epochs: the first warms up; the second's time excludes the end-of-epoch checkpoint.
                results[name] = count / trainer.history[-1]["time_per_epoch"]
    return results["taoctl"], results["bare"]


def sizes(model_path) -> tuple[int, int]:
    model, manifest = TASK.load_model(model_path, None)
    macs, params = count_macs_params(model, tuple(manifest["input_shape"]))
    return params, macs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the unpruned fp32 model file")
    parser.add_argument("--spec", default="specs/detectnet_v2/mobilenet_v2_bccd.txt")
    parser.add_argument("--images", required=True, help="a folder of images (latency and INT8 calibration inputs)")
    parser.add_argument("--frames", default="runs/bccd/tfrecords/trainval/trainval*",
                        help="TFRecords of labelled training frames (training throughput)")
    parser.add_argument("--frames_images", default="runs/bccd/data/trainval")
    parser.add_argument("--pruned", nargs="*", default=[])
    parser.add_argument("--final", default=None, help="the pruned + QAT/PTQ model of the seed's sequence")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train_batch", type=int, default=8)
    parser.add_argument("--train_steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    _, manifest = TASK.load_model(args.model, None)
    classes = list(manifest["classes"])
    _, height, width = manifest["input_shape"]
    paths = det_images.image_files(args.images)
    images = det_images.load_images(paths[:64], width, height)[0]
    print(f"model {args.model} ({manifest['model']['arch']}, input {width}x{height}), torch threads {threads}")

    from taoctl.engine.data import kitti

    frames = kitti.read_tfrecords(args.frames, args.frames_images)
    mapped = [f for f in frames if any(o.cls in classes for o in f.objects)]
    taoctl_ips, bare_ips = bench_training(args.model, mapped, classes, args.spec, args.train_batch, args.train_steps)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"train throughput (batch {args.train_batch}): taoctl {taoctl_ips:.1f} img/s, bare PyTorch "
          f"{bare_ips:.1f} img/s, ratio {taoctl_ips / bare_ips:.2f}x (target >= 0.9x); peak memory {peak_gb:.2f} GB")

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(args.model, fp32, images)
        export_onnx(args.model, int8, images, "int8")
        sides, onnx_files = {}, {args.model: fp32}
        for batch in (1, 8):
            sides[f"eager {batch}"] = (eager_runner, (args.model, images[:batch]))
            sides[f"fp32 {batch}"] = (onnx_runner, (fp32, images[:batch]))
            sides[f"int8 {batch}"] = (onnx_runner, (int8, images[:batch]))
        for i, path in enumerate(args.pruned):
            onnx_files[path] = Path(tmp) / f"pruned_{i}.onnx"
            export_onnx(path, onnx_files[path], images)
            for batch in (1, 8):
                sides[f"{path} eager {batch}"] = (eager_runner, (path, images[:batch]))
                sides[f"{path} fp32 {batch}"] = (onnx_runner, (onnx_files[path], images[:batch]))
        if args.final:
            final_int8 = Path(tmp) / "final_int8.onnx"
            export_onnx(args.final, final_int8, images, "int8")
            sides["final int8 8"] = (onnx_runner, (final_int8, images[:8]))
        seconds, _ = paired_medians(sides, args.repeats, threads)
        for batch in (1, 8):
            eager, fp, q = seconds[f"eager {batch}"], seconds[f"fp32 {batch}"], seconds[f"int8 {batch}"]
            print(f"batch {batch}: eager fp32 {eager * 1000:.1f} ms, ONNX fp32 {fp * 1000:.1f} ms "
                  f"({eager / fp:.2f}x eager), ONNX int8 {q * 1000:.1f} ms ({fp / q:.2f}x fp32 ONNX, target >= 2x)")
        params0, macs0 = sizes(args.model)
        for path in args.pruned:
            params, macs = sizes(path)
            line = [f"pruned {path}: params {params:,} ({params / params0 * 100:.1f} %), MACs {macs:,} "
                    f"({macs / macs0 * 100:.1f} %)"]
            for batch in (1, 8):
                e, o = seconds[f"{path} eager {batch}"], seconds[f"{path} fp32 {batch}"]
                line.append(f"batch {batch}: eager {e * 1000:.1f} ms ({seconds[f'eager {batch}'] / e:.2f}x), "
                            f"ONNX {o * 1000:.1f} ms ({seconds[f'fp32 {batch}'] / o:.2f}x, target >= 1.5x)")
            print("; ".join(line))
        if args.final:
            params, _ = sizes(args.final)
            first_size, final_size = Path(args.model).stat().st_size, final_int8.stat().st_size
            speed = seconds["eager 8"] / seconds["final int8 8"]
            print(f"headline: final {args.final} INT8 ONNX vs first fp32 model: {params0 / params:.1f}x fewer "
                  f"parameters ({params:,} vs {params0:,}), {first_size / final_size:.1f}x smaller file "
                  f"({final_size / 1e6:.2f} MB vs {first_size / 1e6:.2f} MB), {speed:.1f}x throughput at batch 8 "
                  f"(INT8 onnxruntime vs eager PyTorch fp32; goal >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
