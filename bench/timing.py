"""Timing shared by the bench scripts: latency with each side alone in its own process, timed in turns
(:func:`paired_medians`), and a bare training loop's throughput (:func:`bare_loop_rate`)."""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time

import torch


def _serve(conn, threads: int, make_runner, args) -> None:
    """One side of paired_medians, alone in its process: times a call of the runner per request."""
    # Every side on the same cores: left to the scheduler, a 1-thread side stays on whichever vCPU it
    # started on, and the two vCPUs of this VM differ in speed by up to 1.3x.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    torch.set_num_threads(threads)
    run = make_runner(*args)
    run()  # warm-up
    conn.send("ready")
    while conn.recv():
        started, kernel_started = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        run()
        conn.send((time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel_started))


def paired_medians(sides: dict, repeats: int, threads: int) -> tuple[dict, dict]:
    """Median seconds per call of each side, every side in its own process, timed in turns.

    ``sides``: name -> (make_runner, args); make_runner(*args) returns the callable to time.
    Returns (wall seconds, seconds spent in the kernel) per side name; the kernel share is mostly
    page faults: glibc hands PyTorch's activations of more than 32 MB fresh pages on every call.
    Taking turns (a, b, a, b, ...) makes every side see the same machine: on a shared VM the speed
    drifts by 2x within minutes, which timing one side after the other would read as a ratio. A
    process per side is how each deploys, and it keeps the runtimes' thread pools apart: in one
    process onnxruntime's and PyTorch's idle workers still spin on the cores the next side needs
    (measured on the 2-core VM: int8 ONNX took 51 ms there, 29 ms alone in its process).
    """
    context = multiprocessing.get_context("spawn")  # fork would copy a live OpenMP pool into the child
    pipes, workers = {}, []
    try:
        for name, (make_runner, args) in sides.items():
            parent, child = context.Pipe()
            workers.append(context.Process(target=_serve, args=(child, threads, make_runner, args), daemon=True))
            workers[-1].start()
            pipes[name] = parent
        for conn in pipes.values():
            conn.recv()
        times = {name: [] for name in sides}
        for _ in range(repeats):
            for name, conn in pipes.items():
                time.sleep(0.05)  # the previous side's threads stop spinning before this one runs
                conn.send(True)
                times[name].append(conn.recv())
        for conn in pipes.values():
            conn.send(False)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
    return ({name: statistics.median(wall for wall, _ in values) for name, values in times.items()},
            {name: statistics.median(kernel for _, kernel in values) for name, values in times.items()})


def bare_loop_rate(model, batches, loss_of, lr: float, examples: int) -> float:
    """Examples per second of a plain training loop -- ``loss_of(batch)``, backward, AdamW step -- over the
    batches ``batches()`` yields: the second pass timed, the first a warm-up (as the Trainer's first epoch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def epoch():
        model.train()
        for batch in batches():
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    epoch()
    started = time.perf_counter()
    epoch()
    return examples / (time.perf_counter() - started)
