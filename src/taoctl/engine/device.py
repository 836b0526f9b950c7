"""Which device a run uses: CUDA when present (honouring --gpus/--gpu_index), else CPU with one notice."""

from __future__ import annotations

import os

import torch

from taoctl.errors import TaoctlError


def select_device(gpus: int = 1, gpu_index: tuple[int, ...] | list[int] | None = None,
                  use_amp: bool = False, quiet: bool = False) -> torch.device:
    """The device of this process. Under DDP, LOCAL_RANK picks among the allowed GPUs."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        allowed = list(gpu_index) if gpu_index else list(range(torch.cuda.device_count()))
        device = torch.device("cuda", allowed[local_rank % len(allowed)])
        torch.cuda.set_device(device)
        return device
    if not quiet and local_rank == 0:
        wanted = f" (--gpus {gpus} asked)" if gpus and gpus > 1 else ""
        print(f"Notice: no CUDA device available{wanted}; running on CPU.", flush=True)
        if use_amp:
            print("Notice: --use_amp has no effect on CPU; training in fp32.", flush=True)
    return torch.device("cpu")


def model_parallel_devices(count: int, gpu_index: tuple[int, ...] | list[int] | None = None) -> list[torch.device]:
    """The ``count`` GPUs this process splits its model across.

    As in TAO, data-parallel process r (LOCAL_RANK) takes the r-th run of ``count`` consecutive
    allowed GPUs, so --gpus N with a split over ``count`` needs N x count of them.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    available = torch.cuda.device_count()
    allowed = list(gpu_index) if gpu_index else list(range(available))
    needed = count * processes
    if len(allowed) < needed:
        per = f" ({count} per process x {processes} processes)" if processes > 1 else ""
        which = f"--gpu_index allows {len(allowed)}" if gpu_index else f"this machine has {available}"
        raise TaoctlError(f"splitting the model across {count} GPUs needs {needed} CUDA device(s){per}; {which}")
    devices = [torch.device("cuda", i) for i in allowed[local_rank * count:(local_rank + 1) * count]]
    torch.cuda.set_device(devices[0])
    return devices


def to_device(value, device: torch.device, non_blocking: bool = False):
    """``value`` with every tensor in it (also inside lists, tuples and dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    return value


def amp_enabled(device: torch.device, use_amp: bool) -> bool:
    return bool(use_amp) and device.type == "cuda"


def cpu_threads() -> int:
    """The CPU cores this process may run on (its affinity, which containers and taskset narrow)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
