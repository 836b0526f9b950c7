"""What several test files share: the real `taoctl` command, run in a subprocess as a user runs it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}
CLI_MODULE = "taoctl.launcher.cli"  # what the `taoctl` console script runs
# The NLP tasks' fast tests cut the shipped MiniLM to one layer: random weights, seconds per step.
ONE_LAYER = "model.language_model.config={num_hidden_layers: 1}"


@dataclasses.dataclass(frozen=True)
class Taoctl:
    """Runs ``python -m taoctl.launcher.cli ARGS`` (or another taoctl module) in a subprocess.

    A run's environment is this process's, then OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads
    would otherwise spin on the cores parallel tests share), then ``env``, then the call's
    ``env``; a None value removes a variable. It runs in the repository root unless ``cwd``
    says otherwise. ``python`` is the interpreter, by default the one running the tests (the
    venv's); ``preexec_fn`` runs in the child before the command (e.g. to drop privileges).
    """

    python: tuple[str, ...] = (sys.executable,)
    env: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    cwd: str | os.PathLike = REPO
    preexec_fn: Callable[[], None] | None = None

    def configured(self, env: Mapping[str, str | None] | None = None, **changes) -> Taoctl:
        """This runner with ``env`` added to its environment and other fields replaced."""
        return dataclasses.replace(self, env={**self.env, **(env or {})}, **changes)

    def start(self, *args, env: Mapping[str, str | None] | None = None, cwd=None, **popen) -> subprocess.Popen:
        """`taoctl ARGS` started, not waited for; ``popen`` goes to subprocess.Popen (stdout=...)."""
        return subprocess.Popen(self._command(CLI_MODULE, args), **self._options(env, cwd), **popen)

    def __call__(self, *args, env: Mapping[str, str | None] | None = None, cwd=None, timeout: float = 600,
                 check: bool = False) -> subprocess.CompletedProcess:
        """Run `taoctl ARGS` to the end: ``.returncode``, ``.stdout`` and ``.stderr`` (text).

        ``check`` turns a non-zero exit into an AssertionError that shows both streams.
        """
        return self.run_module(CLI_MODULE, *args, env=env, cwd=cwd, timeout=timeout, check=check)

    def run_module(self, module: str, *args, env: Mapping[str, str | None] | None = None, cwd=None,
                   timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
        """``python -m MODULE ARGS`` to the end, as :meth:`__call__` runs the taoctl command."""
        result = subprocess.run(self._command(module, args), capture_output=True, text=True, timeout=timeout,
                                **self._options(env, cwd))
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(result.args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def _command(self, module: str, args) -> list[str]:
        return [*self.python, "-m", module, *map(str, args)]

    def _options(self, env, cwd) -> dict:
        merged = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **self.env, **(env or {})}
        return {"env": {k: v for k, v in merged.items() if v is not None},
                "cwd": self.cwd if cwd is None else cwd, "preexec_fn": self.preexec_fn}


@pytest.fixture(scope="session")
def taoctl() -> Taoctl:
    """``taoctl("classification", "train", "-e", spec, env={...}, cwd=..., timeout=..., check=True)``."""
    return Taoctl()


def make_colour_images(root: Path, counts: Mapping[str, int], size: int = 32) -> Path:
    """A tiny two-class ImageFolder per split (``{"train": 4, "val": 2}``): noisy red and blue PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in counts.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def text_classification_overrides(data) -> list[str]:
    """text_classification train overrides for the generated sample messages in ``data`` (a host or a container
    path): 48 of them, one epoch, 32 tokens, the one-layer encoder."""
    return [f"training_ds.file_path={data / 'train.tsv'}", f"validation_ds.file_path={data / 'dev.tsv'}",
            "model.dataset.num_classes=2", f"model.class_labels.class_labels_file={data / 'labels.txt'}",
            "model.dataset.max_seq_length=32", "trainer.max_epochs=1", "training_ds.num_samples=48", ONE_LAYER]
