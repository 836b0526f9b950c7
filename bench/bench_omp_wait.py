"""What OpenMP's wait policy costs eager PyTorch when other work shares the cores, side by side in one run.

    .venv/bin/python bench/bench_omp_wait.py

The same workload (mobilenet_v2 from taoctl.engine.backbones at 128x128: SGD training steps on
batches of 4, then inference at batch 1) runs in a fresh process under OMP_WAIT_POLICY=ACTIVE
and =PASSIVE, each alone and while a second process keeps one core busy with numpy. libgomp
reads the policy once, when torch loads it, hence one process per measurement. Each phase
reports the median step after a warm-up step, and stops after a fixed number of steps or a
time cap, whichever comes first, so the run stays under about 3 minutes on 2 cores ("runs":
train/infer steps made, warm-up included). This is why every taoctl subtask process gets
OMP_WAIT_POLICY=PASSIVE unless the user set it (taoctl.launcher.entrypoint). Prints numbers,
asserts nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

POLICIES = ("ACTIVE", "PASSIVE")
IMAGE_SIZE = 128
TRAIN_BATCH = 4
TRAIN_STEPS, TRAIN_CAP_S = 6, 8.0
INFER_STEPS, INFER_CAP_S = 30, 4.0
WORKER_TIMEOUT_S = 90
# The competing process: single-threaded numpy matrix products for as long as it lives.
LOAD_CODE = ("import numpy as np\n"
             "a = np.random.default_rng(0).standard_normal((256, 256))\n"
             "while True:\n"
             "    a = np.tanh(a @ a)\n")


def _timed_steps(step, count: int, cap_s: float) -> tuple[float, int]:
    """Median seconds per call of ``step`` and the calls made: a warm-up call, then up to ``count``
    more until ``cap_s`` has passed. When the warm-up alone used the cap it is the measurement."""
    seconds: list[float] = []
    started = time.perf_counter()
    while len(seconds) <= count and (not seconds or time.perf_counter() - started < cap_s):
        before = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - before)
    return statistics.median(seconds[1:] or seconds), len(seconds)


def worker() -> None:
    """One measurement, in this process, under whatever OMP_WAIT_POLICY it was started with."""
    import torch

    from taoctl.engine.backbones import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 10, input_image_size=f"3,{IMAGE_SIZE},{IMAGE_SIZE}")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(TRAIN_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.arange(TRAIN_BATCH) % 10

    def train_step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    model.train()
    train_s, train_steps = _timed_steps(train_step, TRAIN_STEPS, TRAIN_CAP_S)
    model.eval()
    single = images[:1]
    with torch.inference_mode():
        infer_s, infer_steps = _timed_steps(lambda: model(single), INFER_STEPS, INFER_CAP_S)
    print(json.dumps({"train_ms": train_s * 1000, "train_steps": train_steps, "infer_ms": infer_s * 1000,
                      "infer_steps": infer_steps, "threads": torch.get_num_threads()}))


def measure(policy: str, loaded: bool) -> dict | None:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    load = None
    if loaded:
        load_env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        load = subprocess.Popen([sys.executable, "-c", LOAD_CODE], env=load_env)
    try:
        result = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True,
                                timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if load is not None:
            load.kill()
            load.wait()
    if result.returncode != 0:
        raise SystemExit(f"worker failed under OMP_WAIT_POLICY={policy}:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def _ms(row: dict | None, key: str) -> str:
    return f"{row[key + '_ms']:>9.1f}" if row else f"{'timeout':>9}"


def _ratio(numerator: dict | None, denominator: dict | None, key: str) -> str:
    if not numerator or not denominator:
        return "n/a"
    return f"{numerator[key + '_ms'] / denominator[key + '_ms']:.2f}x"


def main() -> int:
    if sys.argv[1:] == ["--worker"]:
        worker()
        return 0
    started = time.perf_counter()
    rows = {(policy, loaded): measure(policy, loaded) for loaded in (False, True) for policy in POLICIES}
    threads = next((row["threads"] for row in rows.values() if row), "?")
    print(f"mobilenet_v2 {IMAGE_SIZE}px, eager CPU, torch threads {threads}, {os.cpu_count()} CPUs; "
          f"train: batch {TRAIN_BATCH} fwd+bwd+SGD, infer: batch 1")
    print(f"{'OMP_WAIT_POLICY':<16}{'added load':<12}{'train ms/step':>15}{'infer ms/image':>16}{'runs':>9}")
    for (policy, loaded), row in rows.items():
        steps = f"{row['train_steps']}/{row['infer_steps']}" if row else "-"
        print(f"{policy:<16}{'1 busy core' if loaded else 'none':<12}{_ms(row, 'train'):>15}{_ms(row, 'infer'):>16}"
              f"{steps:>9}")
    print("ratios (slower / faster)")
    for loaded in (False, True):
        where = "with load" if loaded else "alone"
        active, passive = rows[("ACTIVE", loaded)], rows[("PASSIVE", loaded)]
        print(f"  ACTIVE / PASSIVE {where:<10} train {_ratio(active, passive, 'train'):>8}"
              f"   infer {_ratio(active, passive, 'infer'):>8}")
    for policy in POLICIES:
        alone, loaded_row = rows[(policy, False)], rows[(policy, True)]
        print(f"  {policy:<7} loaded / alone   train {_ratio(loaded_row, alone, 'train'):>8}"
              f"   infer {_ratio(loaded_row, alone, 'infer'):>8}")
    print(f"({time.perf_counter() - started:.0f} s in all; 'timeout': the worker passed {WORKER_TIMEOUT_S} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
