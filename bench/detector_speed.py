"""Deployed-detector speed and size, shared by the detector benches (bench_detectnet, bench_yolo_v3).

Any task of the engine's contract works: the model file is loaded with the task's ``load_model``,
its deployed module is the task's export adapter's (what the .onnx holds, before a graph tail such
as yolo_v3's NMS), its input the task's ``preprocess`` of uint8 images, and the ONNX files are the
product's export (parity checked; INT8 calibrated on the images given).

Latencies are medians over ``repeats`` calls, each side alone in its own process, all taking turns
on the same cores with the same thread count (``timing.paired_medians``).
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from taoctl.engine import export
from taoctl.engine.detection import images as det_images
from taoctl.engine.pruning import count_macs_params
from taoctl.engine.task import Run
from timing import paired_medians

BATCHES = (1, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every detector bench takes."""
    parser.add_argument("--model", required=True, help="the unpruned fp32 model file")
    parser.add_argument("--images", required=True, help="a folder of images (latency and INT8 calibration inputs)")
    parser.add_argument("--pruned", nargs="*", default=[])
    parser.add_argument("--final", default=None, help="the pruned + QAT/PTQ model of the seed's sequence")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)


def prepare(task_name: str, args: argparse.Namespace) -> tuple[np.ndarray, int, dict]:
    """Set the thread count, load (up to 64 of) ``--images`` at the model's input size, print what is
    measured; the images, the thread count and the model's manifest."""
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    _, manifest = engine_task(task_name).load_model(args.model, None)
    _, height, width = manifest["input_shape"]
    images = det_images.load_images(det_images.image_files(args.images)[:64], width, height)[0]
    print(f"model {args.model} ({manifest['model']['arch']}, input {width}x{height}), torch threads {threads}")
    return images, threads, manifest


def engine_task(name: str):
    return importlib.import_module(f"taoctl.tasks.{name}.task").TASK


def _adapter(task, model_path):
    model, manifest = task.load_model(model_path, None)
    return task.export_adapter(Run("export", {}), model, manifest), manifest


def eager_runner(task_name: str, model_path, batch: np.ndarray):
    task = engine_task(task_name)
    adapter, manifest = _adapter(task, model_path)
    module = adapter.module.eval()
    x = torch.from_numpy(task.preprocess(manifest)(batch))

    def run():
        with torch.no_grad():
            module(x)
    return run


def onnx_runner(task_name: str, model_path, onnx_path, batch: np.ndarray):
    """``onnx_path`` (exported from ``model_path``, whose manifest gives the input preprocessing) in onnxruntime."""
    task = engine_task(task_name)
    session = export.ort_session(onnx_path, torch.get_num_threads())
    x = task.preprocess(task.load_model(model_path, None)[1])(batch)
    return lambda: export.run_onnx(session, x)


def export_onnx(task_name: str, model_path, path, images: np.ndarray, data_type: str = "fp32") -> None:
    """The product's export of ``model_path`` (``images``: parity check and INT8 calibration)."""
    task = engine_task(task_name)
    adapter, manifest = _adapter(task, model_path)
    preprocess = task.preprocess(manifest)
    name = adapter.input_names[0]
    calibration = [{name: preprocess(images[i:i + 8])} for i in range(0, len(images), 8)]
    export.export_model(adapter, path, {name: preprocess(images[:8])}, data_type=data_type,
                        calibration=calibration if data_type == "int8" else None)


def sizes(task_name: str, model_path) -> tuple[int, int]:
    model, manifest = engine_task(task_name).load_model(model_path, None)
    macs, params = count_macs_params(model, tuple(manifest["input_shape"]))
    return params, macs


def report(task_name: str, model_path, images: np.ndarray, *, pruned=(), final=None, repeats: int = 7,
           threads: int = 1) -> dict:
    """Print eager vs ONNX fp32 vs ONNX INT8 at batch 1 and 8, every ``pruned`` model's size and speed against
    ``model_path``, and ``final`` (the pruned + INT8 end of the sequence) against the first fp32 model; return
    the medians by side."""
    with tempfile.TemporaryDirectory() as workdir:
        return _report(task_name, model_path, images, Path(workdir), pruned, final, repeats, threads)


def _report(task_name, model_path, images, workdir: Path, pruned, final, repeats, threads) -> dict:
    fp32, int8 = workdir / "fp32.onnx", workdir / "int8.onnx"
    export_onnx(task_name, model_path, fp32, images)
    export_onnx(task_name, model_path, int8, images, "int8")
    sides = {}
    for batch in BATCHES:
        sides[f"eager {batch}"] = (eager_runner, (task_name, model_path, images[:batch]))
        sides[f"fp32 {batch}"] = (onnx_runner, (task_name, model_path, fp32, images[:batch]))
        sides[f"int8 {batch}"] = (onnx_runner, (task_name, model_path, int8, images[:batch]))
    for i, path in enumerate(pruned):
        onnx_path = workdir / f"pruned_{i}.onnx"
        export_onnx(task_name, path, onnx_path, images)
        for batch in BATCHES:
            sides[f"{path} eager {batch}"] = (eager_runner, (task_name, path, images[:batch]))
            sides[f"{path} fp32 {batch}"] = (onnx_runner, (task_name, path, onnx_path, images[:batch]))
    if final:
        final_int8 = workdir / "final_int8.onnx"
        export_onnx(task_name, final, final_int8, images, "int8")
        sides["final int8 8"] = (onnx_runner, (task_name, final, final_int8, images[:8]))
    seconds, _ = paired_medians(sides, repeats, threads)
    for batch in BATCHES:
        eager, fp, q = seconds[f"eager {batch}"], seconds[f"fp32 {batch}"], seconds[f"int8 {batch}"]
        print(f"batch {batch}: eager fp32 {eager * 1000:.1f} ms, ONNX fp32 {fp * 1000:.1f} ms "
              f"({eager / fp:.2f}x eager), ONNX int8 {q * 1000:.1f} ms ({fp / q:.2f}x fp32 ONNX, target >= 2x)")
    params0, macs0 = sizes(task_name, model_path)
    for path in pruned:
        params, macs = sizes(task_name, path)
        line = [f"pruned {path}: params {params:,} ({params / params0 * 100:.1f} %), MACs {macs:,} "
                f"({macs / macs0 * 100:.1f} %)"]
        for batch in BATCHES:
            e, o = seconds[f"{path} eager {batch}"], seconds[f"{path} fp32 {batch}"]
            line.append(f"batch {batch}: eager {e * 1000:.1f} ms ({seconds[f'eager {batch}'] / e:.2f}x), "
                        f"ONNX {o * 1000:.1f} ms ({seconds[f'fp32 {batch}'] / o:.2f}x, target >= 1.5x)")
        print("; ".join(line))
    if final:
        params, _ = sizes(task_name, final)
        first_size, final_size = Path(model_path).stat().st_size, final_int8.stat().st_size
        speed = seconds["eager 8"] / seconds["final int8 8"]
        print(f"headline: final {final} INT8 ONNX vs first fp32 model: {params0 / params:.1f}x fewer "
              f"parameters ({params:,} vs {params0:,}), {first_size / final_size:.1f}x smaller file "
              f"({final_size / 1e6:.2f} MB vs {first_size / 1e6:.2f} MB), {speed:.1f}x throughput at batch 8 "
              f"(INT8 onnxruntime vs eager PyTorch fp32)")
    return seconds
