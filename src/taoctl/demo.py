"""`make demo`: generate the sample data and run every implemented task's sample pipeline.

Each task's pipeline is `specs/<task>/demo.txt`: one taoctl command per line (without the
leading `taoctl`), run from the repo root through the real `taoctl` launcher, so the demo
exercises exactly what a user types. Stops at the first failing step with its exit status.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

DATA_DIR = Path("demo_runs/data")


def pipelines(specs_dir: Path) -> list[tuple[str, list[list[str]]]]:
    found = []
    for steps_file in sorted(specs_dir.glob("*/demo.txt")):
        steps = [shlex.split(line) for line in steps_file.read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        found.append((steps_file.parent.name, steps))
    return found


def run_step(argv: list[str]) -> tuple[int, float]:
    print(f"\n$ taoctl {shlex.join(argv)}", flush=True)
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "taoctl.launcher.cli", *argv])
    return code, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specs", default="specs", help="folder holding specs/<task>/demo.txt")
    parser.add_argument("--only", nargs="*", help="run only these tasks' pipelines")
    args = parser.parse_args(argv)

    started = time.monotonic()
    print(f"Generating sample data in {DATA_DIR} ...", flush=True)
    code = subprocess.call([sys.executable, "-m", "taoctl.engine.data.samples", "--out", str(DATA_DIR)])
    if code:
        return code
    summary = []
    for task, steps in pipelines(Path(args.specs)):
        if args.only and task not in args.only:
            continue
        print(f"\n=== {task}: {len(steps)} steps", flush=True)
        for step in steps:
            code, seconds = run_step(step)
            summary.append((task, step[:2], code, seconds))
            if code:
                print(f"\nDemo failed at `taoctl {shlex.join(step)}` (exit {code}).", file=sys.stderr)
                return code
    print("\nDemo summary:")
    for task, head, code, seconds in summary:
        print(f"  {task:<16} {' '.join(head):<36} {'ok' if code == 0 else 'FAILED':<7} {seconds:7.1f} s")
    print(f"Demo finished in {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
