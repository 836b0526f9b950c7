"""How long the launcher's control commands take, next to `python -c "import torch"`, in one run.

Target (issue 2): `taoctl --help`, `taoctl info` and `taoctl list` under 0.5 s on a 2-core machine,
which they reach by never importing torch.
"""

import statistics
import subprocess
import sys
import time

REPEATS = 5


def timed(argv: list[str]) -> float:
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    torch_import = timed([sys.executable, "-c", "import torch"])
    print(f"{'command':<28}{'median s':>10}{'vs import torch':>18}")
    label = 'python -c "import torch"'
    print(f"{label:<28}{torch_import:>10.3f}{1.0:>17.2f}x")
    worst = 0.0
    for args in (["--help"], ["info"], ["list"]):
        seconds = timed([sys.executable, "-m", "taoctl.launcher.cli", *args])
        worst = max(worst, seconds)
        print(f"{'taoctl ' + ' '.join(args):<28}{seconds:>10.3f}{seconds / torch_import:>17.2f}x")
    print(f"slowest control command: {worst:.3f} s (target < 0.5 s): {'OK' if worst < 0.5 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
