"""Runs a subtask's processes under torchrun and reports how they ended in one line, as one process would.

torchrun's agent prints its own logging, and when a worker fails a Python traceback of its own
followed by a table of the failed processes; every worker prints the same ``taoctl:`` error line.
Here the agent's stderr (which its workers inherit) passes through a filter: progress and
warnings pass as they come; the agent's logging and traceback are dropped (``-v`` keeps them);
``taoctl:`` lines are printed once each when the run ends; a worker killed by a signal no taoctl
process sent (the OOM killer, a `kill -9`) is one line naming its rank and pid.

The agent runs in a process group of its own, so a signal to the entrypoint's group (`taoctl
stop`, the launcher passing on Ctrl-C) reaches the agent once, passed on from here: the agent then
stops its workers with that signal and waits for them, and the trainer writes status.json's
FAILURE line (a SIGTERM arriving twice would make the agent kill its workers at once).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TextIO

# The agent's logging lines: glog style, e.g. "W1201 11:07:35.628000 25836 torch/distributed/...".
_AGENT_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S*torch/")
# The failure table the agent's ChildFailedError prints, one entry per failed process.
_TABLE_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_TABLE_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+) \(pid: (\d+)\)")


class AgentOutput:
    """Filters the agent's stderr (``feed`` bytes as they come, then ``close``); what is kept goes to ``out``."""

    def __init__(self, out: TextIO, verbose: bool):
        self.out, self.verbose = out, verbose
        self.partial = ""
        self.in_traceback = False
        self.error_lines: list[str] = []  # workers' `taoctl:` lines, each once, in order
        self.stopping = False  # an interrupt was passed on to the agent
        self.failures: list[tuple[int, int, int]] = []  # (rank, exit code, pid) from the agent's table
        self._rank: int | None = None

    def feed(self, data: bytes) -> None:
        text = self.partial + data.decode(errors="replace")
        # A progress line ends in "\r": it passes at once; a line without its end yet waits.
        *segments, self.partial = re.split(r"(?<=[\r\n])", text)
        for segment in segments:
            self._segment(segment)
        self.out.flush()

    def close(self) -> None:
        if self.partial:
            self._segment(self.partial + "\n")
        self.out.flush()

    def _segment(self, segment: str) -> None:
        if self.verbose:
            self.out.write(segment)
            return
        line = segment.rstrip("\r\n")
        if line.startswith("taoctl: "):
            if line not in self.error_lines:
                self.error_lines.append(line)
            return
        if line.startswith("Traceback (most recent call last):"):
            self.in_traceback = True  # a worker prints none without -v: this is the agent's
        if self.in_traceback:
            self._table_line(line)
            return
        if _AGENT_LOG.match(line):
            return
        if self.stopping and line.startswith("terminate called"):
            # C++'s std::terminate as a stopped process tears down (a c10d store thread still running):
            # the run ends as interrupted all the same.
            return
        self.out.write(segment)

    def _table_line(self, line: str) -> None:
        if match := _TABLE_RANK.match(line):
            self._rank = int(match.group(1))
        elif (match := _TABLE_EXIT.match(line)) and self._rank is not None:
            self.failures.append((self._rank, int(match.group(1)), int(match.group(2))))
            self._rank = None


def run(command: list[str], env: dict[str, str], subtask: str, verbose: bool,
        preexec_fn: Callable[[], None] | None = None, out: TextIO | None = None) -> int:
    """Run torchrun's ``command`` to its end; returns the exit status for the whole run (see the module)."""
    out = out or sys.stderr
    # What torchrun sets anyway when it is unset, after a banner saying so.
    env = {"OMP_NUM_THREADS": "1", **env}
    agent = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, process_group=0, preexec_fn=preexec_fn)
    passed_on: list[int] = []
    output = AgentOutput(out, verbose)

    def pass_on(signum, _frame):
        passed_on.append(signum)
        output.stopping = True
        with contextlib.suppress(ProcessLookupError):
            agent.send_signal(signum)

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while data := os.read(agent.stderr.fileno(), 65536):
            output.feed(data)
        output.close()
        code = agent.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return _report(output, code, subtask, passed_on[0] if passed_on else None, out)


def _report(output: AgentOutput, code: int, subtask: str, interrupted_by: int | None, out: TextIO) -> int:
    """The run's last line(s) and exit status from what the workers said and the agent's failure table."""
    # SIGTERM is how the agent stops the other processes once one failed: not a cause.
    killed = [(rank, -exit_code, pid) for rank, exit_code, pid in output.failures
              if exit_code < 0 and -exit_code != signal.SIGTERM]
    if killed and interrupted_by is None:
        rank, signum, pid = killed[0]
        name = signal.Signals(signum).name if signum in signal.Signals.__members__.values() else str(signum)
        out.write(f"taoctl: {subtask} process rank {rank} (pid {pid}) was killed by {name}; "
                  f"the other processes were stopped\n")
        return 128 + signum
    for line in output.error_lines:
        out.write(line + "\n")
    if interrupted_by is not None:
        return 128 + interrupted_by
    if code == 0:
        return 0
    exit_codes = [exit_code for _, exit_code, _ in output.failures if exit_code > 0]
    if not output.error_lines:
        where = f"process rank {output.failures[0][0]} exited with code {output.failures[0][1]}" \
            if output.failures else f"torchrun exited with code {code}"
        out.write(f"taoctl: {subtask} failed: {where} (rerun with -v for torchrun's output)\n")
    return exit_codes[0] if exit_codes else code
