"""The local runtime: the subtask runs as a child process in the current environment.

The child gets its own process group so that Ctrl-C / SIGTERM reach the whole job (torchrun
and its workers included) exactly once, forwarded by the launcher, and `taoctl stop` can end
it from another shell; it dies with the launcher (a SIGKILL of taoctl ends the run too). The child's exit status is the launcher's (TAO's returns 0 even
when the task failed). Its environment is the launcher's plus the entrypoint's subtask
defaults (OMP_WAIT_POLICY=PASSIVE unless set), so `run <cmd>` gets them too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from taoctl.launcher import jobs
from taoctl.launcher.entrypoint import die_with_parent, subtask_env_defaults

NAME = "local"


def entrypoint_command(task: str, subtask: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "taoctl.launcher.entrypoint", task, subtask, *args]


def run(command: list[str], task: str, subtask: str, args: list[str]) -> int:
    env = {**os.environ, **subtask_env_defaults(os.environ)}
    launcher = os.getpid()
    child = subprocess.Popen(command, start_new_session=True, env=env, preexec_fn=lambda: die_with_parent(launcher))
    record = jobs.record_job(child.pid, task, subtask, args)

    def forward(signum, _frame):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return_code = child.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover - the handler above takes SIGINT
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        record.unlink(missing_ok=True)
    # A child killed by a signal reports -N; shells report 128+N.
    return 128 - return_code if return_code < 0 else return_code
