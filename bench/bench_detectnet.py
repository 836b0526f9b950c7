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
import statistics
import sys
import tempfile
import time

import torch

from taoctl.engine.trainer import Trainer
from taoctl.tasks.detectnet_v2 import data as dn_data
from taoctl.tasks.detectnet_v2 import targets
from taoctl.tasks.detectnet_v2.encoding import STRIDE
from taoctl.tasks.detectnet_v2.task import TASK
import detector_speed


def bench_training(model_path, frames, classes, spec_path, batch: int, steps: int, rounds: int) -> tuple[float, float]:
    """(taoctl images/s, bare images/s): medians over ``rounds`` of ``steps`` Adam steps of ``batch`` images
    through detectnet_v2's step."""
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

    def throughput(name: str) -> float:
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
            return count / (time.perf_counter() - started)
        else:
            loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(model, optimizer, loader, step, tmp, 2, "bench", manifest, progress_interval_s=1e9)
                trainer.train()
                # Two epochs: the first warms up; the second's time excludes the end-of-epoch checkpoint.
                return count / trainer.history[-1]["time_per_epoch"]

    # The sides take turns, each first in every other round, and each reports its median: one pass of
    # either swung 0.7-1.0x on the quiet VM with the order fixed.
    results = {"bare": [], "taoctl": []}
    for turn in range(rounds):
        for name in (("bare", "taoctl") if turn % 2 == 0 else ("taoctl", "bare")):
            results[name].append(throughput(name))
    return statistics.median(results["taoctl"]), statistics.median(results["bare"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    detector_speed.add_arguments(parser)
    parser.add_argument("--spec", default="specs/detectnet_v2/mobilenet_v2_bccd.txt")
    parser.add_argument("--frames", default="runs/bccd/tfrecords/trainval/trainval*",
                        help="TFRecords of labelled training frames (training throughput)")
    parser.add_argument("--frames_images", default="runs/bccd/data/trainval")
    parser.add_argument("--train_batch", type=int, default=8)
    parser.add_argument("--train_steps", type=int, default=6)
    parser.add_argument("--train_rounds", type=int, default=5)
    args = parser.parse_args(argv)
    images, threads, manifest = detector_speed.prepare("detectnet_v2", args)
    classes = list(manifest["classes"])

    from taoctl.engine.data import kitti

    frames = kitti.read_tfrecords(args.frames, args.frames_images)
    mapped = [f for f in frames if any(o.cls in classes for o in f.objects)]
    taoctl_ips, bare_ips = bench_training(args.model, mapped, classes, args.spec, args.train_batch, args.train_steps,
                                         args.train_rounds)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"train throughput (batch {args.train_batch}): taoctl {taoctl_ips:.1f} img/s, bare PyTorch "
          f"{bare_ips:.1f} img/s, ratio {taoctl_ips / bare_ips:.2f}x (target >= 0.9x); peak memory {peak_gb:.2f} GB")

    detector_speed.report("detectnet_v2", args.model, images, pruned=args.pruned, final=args.final, repeats=args.repeats,
                          threads=threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
