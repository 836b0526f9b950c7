"""QAT INT8 export vs fp32 in onnxruntime on this CPU: latency at batch 1 and 8, side by side.

Protocol: a DetectNet_v2-shaped network (a registered backbone cut at stride 16, a 1x1 coverage
head with its sigmoid kept float and a 1x1 box head; random weights, since latency does not depend
on them) at 3x320x416, the issue's input size. fp32 ONNX comes from torch's dynamo exporter (opset
18); INT8 from ``engine.qat.export_qdq`` after ``prepare_qat`` and a few fake-quant training steps
(ranges from two calibration batches, then the moving average), same exporter and opset. Each
session uses ``--threads`` intra-op threads (default 2, this machine's cores) and every ORT graph
optimisation; the median of ``--repeats`` runs after two warm-ups is reported. INT8 runs twice:
with onnxruntime's default session options, and with ``session.qdqisint8allowed=1`` (int8 x int8
kernels; without it, on x86 CPUs without VNNI onnxruntime converts activations to uint8 and its
AVX2 u8 x s8 kernel saturates int16 sums, see the ``max |int8 - fake quant|`` columns).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_qat.py [--archs resnet18 mobilenet_v2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from taoctl.engine import qat
from taoctl.engine.backbones import create_features

HEIGHT, WIDTH, CLASSES = 320, 416, 3


class DetectorShape(nn.Module):
    head_names = ("output_cov", "output_bbox")

    def __init__(self, arch: str):
        super().__init__()
        self.backbone = create_features(arch, (16,), input_image_size=f"3,{HEIGHT},{WIDTH}")
        channels = self.backbone.channels[-1]
        self.output_cov = nn.Conv2d(channels, CLASSES, 1)
        self.output_bbox = nn.Conv2d(channels, 4 * CLASSES, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        features = self.backbone(x)[-1]
        return self.sigmoid(self.output_cov(features)), self.output_bbox(features)


def session(path: Path, threads: int, int8_allowed: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if int8_allowed:
        options.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ms(sess: ort.InferenceSession, x: np.ndarray, repeats: int) -> float:
    for _ in range(2):
        sess.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def build_qat(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = DetectorShape(arch)
    rng = torch.Generator().manual_seed(1)
    batches = [torch.rand(2, 3, HEIGHT, WIDTH, generator=rng) for _ in range(2)]
    qat.prepare_qat(model, batches, skip=("sigmoid",))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for batch in batches:  # a few fake-quant steps, so BatchNorm statistics and ranges move as in training
        cov, bbox = model(batch)
        loss = cov.mean() + bbox.abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"input 3x{HEIGHT}x{WIDTH}, {args.threads} threads, median of {args.repeats}; onnxruntime {ort.__version__}")
    header = (f"{'arch':<13}{'batch':>6}{'fp32 ms':>10}{'int8 ms':>10}{'x':>7}{'int8* ms':>10}{'x*':>7}"
              f"{'max|int8-fq|':>14}{'max|int8*-fq|':>15}")
    print(header)
    with tempfile.TemporaryDirectory() as work:
        for arch in args.archs:
            model = build_qat(arch)
            fp32_path, int8_path = Path(work) / f"{arch}_fp32.onnx", Path(work) / f"{arch}_int8.onnx"
            sample = torch.rand(2, 3, HEIGHT, WIDTH)
            with qat.float_mode(model), torch.no_grad():
                torch.onnx.export(model, (sample,), str(fp32_path), dynamo=True, opset_version=18,
                                  input_names=["input"], output_names=["output_cov", "output_bbox"],
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                                  external_data=False, verbose=False)
            qat.export_qdq(model, sample, int8_path, ["input"], ["output_cov", "output_bbox"],
                           {"input": {0: "batch"}}, opset=18)
            sessions = (session(fp32_path, args.threads), session(int8_path, args.threads),
                        session(int8_path, args.threads, int8_allowed=True))
            for batch in args.batches:
                x = np.random.default_rng(batch).random((batch, 3, HEIGHT, WIDTH), dtype=np.float32)
                with torch.no_grad():
                    fake_quant = model(torch.from_numpy(x))[1].numpy()
                fp32, int8, int8_allowed = (latency_ms(s, x, args.repeats) for s in sessions)
                errors = [float(np.abs(s.run(None, {"input": x})[1] - fake_quant).max()) for s in sessions[1:]]
                print(f"{arch:<13}{batch:>6}{fp32:>10.1f}{int8:>10.1f}{fp32 / int8:>7.2f}{int8_allowed:>10.1f}"
                      f"{fp32 / int8_allowed:>7.2f}{errors[0]:>14.4f}{errors[1]:>15.4f}")
    print("x: fp32 / int8 latency; * with session.qdqisint8allowed=1; fq: the PyTorch fake-quant model's output_bbox")


if __name__ == "__main__":
    main()
