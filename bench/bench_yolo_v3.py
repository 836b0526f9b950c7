"""YOLOv3 speed and size, measured side by side in one run (prints ratios, asserts nothing).

    .venv/bin/python bench/bench_yolo_v3.py --model runs/bccd_yolo/train/weights/yolov3_mobilenet_v2_epoch_040.tlt \
        --images runs/bccd/data/test/images [--pruned p.tlt ...] [--final final.tlt] [--repeats 7]

Protocol of issue 14's figures (BCCD, ../shared/data/bccd_kitti; docs/yolo_v3_bccd.sh runs it):
accuracy is `taoctl yolo_v3 evaluate` on the test split (72 photos, never trained or validated on),
mAP50 with the spec's INTEGRATE (all-point) AP; this bench gives the speed side, on the test images:
1. latency at batch 1 and 8: eager PyTorch fp32 (network + decoding) vs ONNX fp32 vs ONNX INT8
   (calibrated QDQ) in onnxruntime, both ONNX files with TAO's BatchedNMS outputs (NMS in the
   graph; INT8 target >= 2x fp32 ONNX);
2. every --pruned model (retrained or not: speed depends on the widths only): parameters, MACs,
   eager and ONNX fp32 latency vs the unpruned model's (target >= 1.5x ONNX at batch 1 and 8 for
   <= 50 % of the MACs);
3. --final (pruned + QAT/PTQ) against the first model: parameters, file size, INT8 ONNX vs eager
   fp32 throughput at batch 8.
Latencies: medians over --repeats calls, each side alone in its own process, all taking turns on the
same cores with the same thread count (bench/timing.py). Read ratios from a quiet machine.
"""

from __future__ import annotations

import argparse
import sys

import detector_speed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    detector_speed.add_arguments(parser)
    args = parser.parse_args(argv)
    images, threads, _ = detector_speed.prepare("yolo_v3", args)
    detector_speed.report("yolo_v3", args.model, images, pruned=args.pruned, final=args.final, repeats=args.repeats,
                          threads=threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
