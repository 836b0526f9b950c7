"""Which device a run uses: CUDA when present (honouring --gpus/--gpu_index), else CPU with one notice."""

from __future__ import annotations

import os

import torch


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


def amp_enabled(device: torch.device, use_amp: bool) -> bool:
    return bool(use_amp) and device.type == "cuda"
