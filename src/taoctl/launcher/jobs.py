"""Records of the jobs this user started through the local runtime, for `list` and `stop`.

One JSON file per running job under ``$TAOCTL_HOME/jobs`` (default ``~/.taoctl/jobs``),
written atomically when the job starts and removed when it ends. A pid alone does not name a
process: once a job is gone the kernel gives its pid to another process, which `stop --all`
would then signal. So a record also holds the process's start time (field 22 of
``/proc/<pid>/stat``, fixed for the life of a process) and the host; a record whose pid is no
process, or another process than the one recorded, is stale: `list` and `stop` skip it and
remove it, as they do a record they cannot read (truncated, edited by hand). Records of other
hosts (a home shared over the network) are left alone: only their host can tell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import time
from pathlib import Path

from taoctl.fileio import write_atomic

# What a record must hold, with its type, for `list` to show it and `stop` to signal it.
RECORD_FIELDS = {"id": str, "pid": int, "start_time": int, "host": str, "task": str, "subtask": str,
                 "command": str, "results_dir": str, "started": str}


def taoctl_home() -> Path:
    return Path(os.environ.get("TAOCTL_HOME", Path.home() / ".taoctl"))


def jobs_dir() -> Path:
    return taoctl_home() / "jobs"


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None if there is no such process
    or it has ended (a zombie waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2, the command name in parentheses, may hold spaces and ')': count from the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def results_dir_of(subtask: str, args: list[str]) -> str:
    """The absolute results dir a subtask's flags name (``-r``/``--results_dir``), else ""."""
    if subtask == "run":  # a command of the user's own: its flags are not TAO's
        return ""
    for i, arg in enumerate(args):
        if arg in ("-r", "--results_dir") and i + 1 < len(args):
            return os.path.abspath(args[i + 1])
        if arg.startswith("--results_dir="):
            return os.path.abspath(arg.split("=", 1)[1])
    return ""


def record_job(pid: int, task: str, subtask: str, args: list[str]) -> Path:
    record = {"id": f"local-{pid}", "pid": pid, "start_time": process_start_time(pid), "host": socket.gethostname(),
              "task": task, "subtask": subtask, "args": args, "command": shlex.join(["taoctl", task, subtask, *args]),
              "results_dir": results_dir_of(subtask, args), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "cwd": os.getcwd(), "runtime": "local"}
    path = jobs_dir() / f"{record['id']}.json"
    write_atomic(path, json.dumps(record))
    return path


def _read(path: Path) -> dict | None:
    """The record in ``path``, or None when it is not one (not JSON, a field missing or mistyped)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(type(record.get(k)) is not t for k, t in RECORD_FIELDS.items()):
        return None
    return record


def _is_running(record: dict) -> bool:
    """Whether the recorded process is still running: its pid names a process with its start time."""
    return process_start_time(record["pid"]) == record["start_time"]


def running_jobs() -> list[dict]:
    """This host's running jobs, each record with ``status``; stale and unreadable records are removed."""
    jobs = []
    folder = jobs_dir()
    if not folder.is_dir():
        return jobs
    host = socket.gethostname()
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue  # a record being written: write_atomic's temporary file
        record = _read(path)
        if record is not None and record["host"] != host:
            continue
        if record is not None and _is_running(record):
            jobs.append({**record, "status": "running"})
        else:
            with contextlib.suppress(OSError):  # gone already, or not ours to remove: never fatal
                path.unlink()
    return jobs


# How long a stopped job gets to write its FAILURE line and exit before SIGKILL: torchrun's agent gives
# its workers 30 s, and a DDP run's processes took 5-10 s to exit on a loaded 2-core machine.
STOP_GRACE_S = 30.0


def stop_job(record: dict, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after the grace time.

    The process is checked against its record before each signal, so a job that ended
    meanwhile is left alone, and so is whatever process got its pid.
    """
    pgid = record["pid"]  # the job is the leader of its own process group
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not _is_running(record):
            return
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _is_running(record):
            time.sleep(0.1)
