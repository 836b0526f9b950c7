"""Refusing an output that would destroy or mix into an input, before anything is written.

Called once for every subtask by the engine's runners, and by the torch-free dataset_convert
and augment commands (it imports nothing heavy). Without it ``prune -m m.tlt -o m.tlt`` replaced
the trained model, ``--log_file spec.txt`` appended to the spec, and a results dir inside a
training folder was read back by the next run as one more class. Paths are compared resolved
(symlinks followed, hard links by inode), so another spelling of an input is caught too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from taoctl.errors import TaoctlError

class OverwriteError(TaoctlError):
    """An output refused because it is (or is inside) an input, or another output: nothing was written."""


# {what: path} or (what, path) pairs (a glob's matches share one field's name); None: not given.
Paths = Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, str | os.PathLike | None]]


def refuse_overwrites(inputs: Paths, outputs: Paths) -> None:
    """Raise OverwriteError (one line, exit 2) when an output would overwrite or land inside an input.

    ``inputs`` and ``outputs`` map what names a path (a flag such as ``-m``, a spec field such
    as ``train_config.train_dataset_path``) to the path; None means not given. Refused: an
    output given as an empty string; an output that is an input (file or folder); an output
    inside an input folder (it would be read back as data); two outputs that are one path.
    An output folder that merely holds an input (``evaluate -m out/weights/m.tlt -r out``) is fine.
    """
    given_inputs = [(what, os.fspath(path)) for what, path in _pairs(inputs) if path is not None and os.fspath(path)]
    seen_outputs: list[tuple[str, str]] = []
    for what, path in _pairs(outputs):
        if path is None:
            continue
        path = os.fspath(path)
        if not path.strip():
            raise OverwriteError(f"{what} is empty: name a file or folder")
        for input_what, input_path in given_inputs:
            if _same(path, input_path):
                raise OverwriteError(f"{what} {path} is also the input {input_what} ({input_path}): "
                                  f"choose another output")
            if os.path.isdir(input_path) and _inside(path, input_path):
                raise OverwriteError(f"{what} {path} is inside the input {input_what} ({input_path}), where it "
                                  f"would be read back as input: choose an output outside it")
        for other_what, other_path in seen_outputs:
            if _same(path, other_path):
                raise OverwriteError(f"{what} {path} is also the output {other_what} ({other_path}): "
                                  f"choose another path for one of them")
        seen_outputs.append((what, path))


def _pairs(paths: Paths) -> Iterable[tuple[str, str | os.PathLike | None]]:
    return paths.items() if isinstance(paths, Mapping) else paths


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and case-insensitive file systems too
    except OSError:  # one of them does not exist yet: compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder and path != folder
