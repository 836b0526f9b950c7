"""Runs one subtask in this process: ``python -m taoctl.launcher.entrypoint TASK SUBTASK ARGS...``.

This is the command every runtime starts (a local child process, or the container's
command in the docker runtime). It finds the subtask's module by name, and when more than
one process is asked for (``--gpus N`` or ``--num_processes N``) for a subtask the task
declares distributed (train) it re-launches itself under torchrun, as TAO's entrypoint
wrapper does with mpirun/torchrun; any other subtask runs as one process and says so.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Mapping

from taoctl.errors import TaoctlError
from taoctl.launcher.registry import get_task

# Set by this module in the processes torchrun starts, so they do not launch again.
DDP_CHILD_ENV = "TAOCTL_DDP_CHILD"
# The command as the user typed it (`taoctl dataset augmentation`), for help and usage lines.
PROG_ENV = "TAOCTL_PROG"
# The TAO 5 command group (`model`, `dataset`, `deploy`) the subtask was typed under; unset for
# TAO 4's `taoctl <task> <subtask>`. The engine names its files and applies -k as that TAO
# generation does (taoctl.engine.modelfile.CLI_GROUP_ENV reads the same variable).
CLI_GROUP_ENV = "TAOCTL_CLI_GROUP"
# What every subtask process gets unless the user set the variable. OpenMP's default
# spin-waiting made eager PyTorch 5-50x slower whenever other work shared the cores
# (bench/bench_omp_wait.py); libgomp reads the policy once, when torch loads it.
SUBTASK_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def subtask_env_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """:data:`SUBTASK_ENV_DEFAULTS`, each replaced by the value ``environ`` already has."""
    return {name: environ.get(name, value) for name, value in SUBTASK_ENV_DEFAULTS.items()}


def _flag_value(args: list[str], names: tuple[str, ...], default: str | None = None) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def processes_requested(args: list[str]) -> tuple[str, int]:
    """Processes per node that the subtask's flags ask for, with the flag that asked:
    ``("-np", N)``, else ``("--gpus", N)`` (``("--gpus", 1)`` when neither asks)."""
    try:
        processes = int(_flag_value(args, ("-np", "--num_processes"), "-1"))
        gpus = int(_flag_value(args, ("--gpus",), "1"))
    except ValueError:
        return "--gpus", 1  # the subtask's own parser reports the bad value
    return ("-np", processes) if processes > 0 else ("--gpus", max(gpus, 1))


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


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux's PR_SET_PDEATHSIG).

    The subtask runs in its own session, so a SIGKILL of the launcher (or of its process group)
    would otherwise leave it training, writing into a results dir that a re-run then also uses.
    ``parent_pid``: the parent expected; if it is already gone, exit now.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    from taoctl.engine.cli import handle_interrupts, run_command  # click only; keeps `--help` fast

    # `taoctl stop` and Ctrl-C (passed on by the launcher) end a run with SIGTERM / SIGINT: an
    # interrupt that writes status.json's FAILURE line and removes temporary files on the way out.
    handle_interrupts()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before anything loads torch, for runtimes that start this module directly (a container).
    os.environ.update(subtask_env_defaults(os.environ))

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

    flag, nproc = processes_requested(args)
    if nproc > 1 and not os.environ.get(DDP_CHILD_ENV) and not {"-h", "--help"} & set(args):
        if subtask not in task.distributed_subtasks:
            several = ", ".join(task.distributed_subtasks) or "none"
            print(f"taoctl: {subtask} runs as one process; {flag} {nproc} uses one device "
                  f"(subtasks that run as several: {several})", file=sys.stderr, flush=True)
        elif not {"--dry-run", "--dry_run"} & set(args):
            from taoctl.launcher import torchrun

            command = torchrun_command(task.name, subtask, args, nproc)
            print(f"Launching {nproc} processes: {' '.join(command[2:6])} ...", flush=True)
            env = dict(os.environ, **{DDP_CHILD_ENV: "1"})
            entrypoint = os.getpid()
            verbose = bool({"-v", "--verbose"} & set(args)) or os.environ.get("TAOCTL_DEBUG") == "1"
            return torchrun.run(command, env, subtask, verbose, preexec_fn=lambda: die_with_parent(entrypoint))
    if os.environ.get(DDP_CHILD_ENV):
        die_with_parent()  # a torchrun worker ends with its agent, which ends with this run's entrypoint

    module = importlib.import_module(task.module_for(subtask))
    prog = os.environ.get(PROG_ENV) or (f"taoctl {task.name}" if task.direct else f"taoctl {task.name} {subtask}")
    code = run_command(module.command, args, prog_name=prog)
    # Its one line is out: a signal while the interpreter exits (torchrun stopping the other processes)
    # ends it at once instead of raising KeyboardInterrupt in an atexit callback.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    return code


if __name__ == "__main__":
    sys.exit(main())
