"""Runs one subtask in this process: ``python -m taoctl.launcher.entrypoint TASK SUBTASK ARGS...``.

This is the command every runtime starts (a local child process, or the container's
command in the docker runtime). It finds the subtask's module by name, and when more than
one process is asked for (``--gpus N`` or ``--num_processes N``) it re-launches itself
under torchrun, as TAO's entrypoint wrapper does with mpirun/torchrun.
"""

from __future__ import annotations

import importlib
import os
import sys

from taoctl.errors import TaoctlError
from taoctl.launcher.registry import get_task

# Set by this module in the processes torchrun starts, so they do not launch again.
DDP_CHILD_ENV = "TAOCTL_DDP_CHILD"
# The command as the user typed it (`taoctl dataset augmentation`), for help and usage lines.
PROG_ENV = "TAOCTL_PROG"


def _flag_value(args: list[str], names: tuple[str, ...], default: str | None = None) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def world_size_requested(args: list[str]) -> int:
    """Processes per node that the subtask's flags ask for (1 when none)."""
    try:
        processes = int(_flag_value(args, ("-np", "--num_processes"), "-1"))
        gpus = int(_flag_value(args, ("--gpus",), "1"))
    except ValueError:
        return 1  # the subtask's own parser reports the bad value
    return processes if processes > 0 else max(gpus, 1)


def torchrun_command(task: str, subtask: str, args: list[str], nproc: int) -> list[str]:
    nnodes = _flag_value(args, ("--num_nodes",), "1")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    master_addr = _flag_value(args, ("--master_addr",))
    if master_addr is None and nnodes == "1":
        command.append("--standalone")
    else:
        command += [f"--node_rank={_flag_value(args, ('--node_rank',), '0')}",
                    f"--master_addr={master_addr or '127.0.0.1'}",
                    f"--master_port={_flag_value(args, ('--master_port',), '29500')}"]
    return command + ["-m", "taoctl.launcher.entrypoint", task, subtask, *args]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from taoctl.engine.cli import run_command  # click only; keeps `--help` fast

    if len(argv) < 2:
        print("usage: python -m taoctl.launcher.entrypoint TASK SUBTASK [ARGS...]", file=sys.stderr)
        return 2
    task_name, subtask, args = argv[0], argv[1], argv[2:]
    try:
        task = get_task(task_name)
        task.check_subtask(subtask)
    except TaoctlError as exc:
        print(f"taoctl: {exc}", file=sys.stderr)
        return exc.exit_code

    nproc = world_size_requested(args)
    help_or_dry = {"-h", "--help", "--dry-run", "--dry_run"} & set(args)
    if nproc > 1 and not os.environ.get(DDP_CHILD_ENV) and not help_or_dry:
        import subprocess

        command = torchrun_command(task.name, subtask, args, nproc)
        print(f"Launching {nproc} processes: {' '.join(command[2:6])} ...", flush=True)
        env = dict(os.environ, **{DDP_CHILD_ENV: "1"})
        return subprocess.call(command, env=env)

    module = importlib.import_module(task.module_for(subtask))
    prog = os.environ.get(PROG_ENV) or (f"taoctl {task.name}" if task.direct else f"taoctl {task.name} {subtask}")
    return run_command(module.command, args, prog_name=prog)


if __name__ == "__main__":
    sys.exit(main())
