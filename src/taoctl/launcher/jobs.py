"""Records of the jobs this user started through the local runtime, for `list` and `stop`.

One JSON file per running job under ``$TAOCTL_HOME/jobs`` (default ``~/.taoctl/jobs``),
written atomically when the job starts and removed when it ends; a record whose process
is gone (the launcher was killed) is ignored and cleaned up by `taoctl list`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from taoctl.fileio import write_atomic


def taoctl_home() -> Path:
    return Path(os.environ.get("TAOCTL_HOME", Path.home() / ".taoctl"))


def jobs_dir() -> Path:
    return taoctl_home() / "jobs"


def record_job(pid: int, task: str, subtask: str, args: list[str]) -> Path:
    record = {"id": f"local-{pid}", "pid": pid, "task": task, "subtask": subtask, "args": args,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cwd": os.getcwd(), "runtime": "local"}
    path = jobs_dir() / f"{record['id']}.json"
    write_atomic(path, json.dumps(record))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_jobs() -> list[dict]:
    jobs = []
    folder = jobs_dir()
    if not folder.is_dir():
        return jobs
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(record["pid"]):
            record["status"] = "running"
            jobs.append(record)
        else:
            path.unlink(missing_ok=True)
    return jobs


def stop_job(record: dict, grace_s: float = 10.0) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after the grace time."""
    pgid = record["pid"]
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(record["pid"]):
        time.sleep(0.1)
    if _alive(record["pid"]):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
