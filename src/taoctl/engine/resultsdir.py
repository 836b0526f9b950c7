"""A train run's results dir: one run at a time, and claimed only by a run that wrote a checkpoint.

``locked_results_dir`` holds an OS lock on ``.taoctl_lock`` in the dir while a run trains; the
kernel drops it when the process ends however it ends, so a crash never leaves a stale lock.
``prepare_results_dir`` then checks the dir against the spec recorded in ``.taoctl_run.json``:
a fingerprint of what the spec says about training, so comments, layout and the fields that only
later subtasks read (``TRAINING_NEUTRAL_FIELDS``) can change without the dir being refused.
Both run on the main process (global rank 0) only: the other ranks and nodes of a run share it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic

LOCK_FILE = ".taoctl_lock"
RUN_FILE = ".taoctl_run.json"
# Spec fields that no train run reads. TAO's notebooks have users set eval_config.model_path to
# the trained checkpoint before evaluate, in the very spec a retrain or resume then uses; TAO 5's
# YAML specs name each later action's checkpoint.
TRAINING_NEUTRAL_FIELDS = frozenset({"eval_config.model_path", "evaluate.checkpoint", "inference.checkpoint",
                                     "prune.checkpoint", "export.checkpoint"})


@contextlib.contextmanager
def locked_results_dir(results_dir) -> Iterator[Path]:
    """Create ``results_dir`` and hold its lock while the block runs, or refuse in one line.

    A POSIX record lock (``fcntl.lockf``), not ``flock``: forked data-loader workers do not
    inherit it, so a killed trainer frees the dir at once even while its workers linger. The
    lock file names its holder (pid and command line) for the refusal message; a refused run
    only reads it and writes nothing in the dir. The file stays after the run: only the lock
    says a run is live, and removing the file could let two runs lock two different files.
    """
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(results_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TaoctlError(f"results dir {results_dir} is not writable: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):  # e.g. ENOLCK: a filesystem without locks
                raise TaoctlError(f"results dir {results_dir} cannot be locked: {exc.strerror}") from None
            raise TaoctlError(f"results dir {results_dir} is in use by {_holder(fd)}; wait for that run to end, "
                              f"stop it, or use another -r") from None
        command = shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]])
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        yield results_dir
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """The holder the lock file names, as "pid N (command)"; "another run" before it has written it."""
    try:
        holder = json.loads(os.pread(fd, 64 * 1024, 0))
        return f"pid {int(holder['pid'])} ({holder['command']})"
    except (ValueError, KeyError, TypeError):
        return "another run"


def _has_checkpoint(results_dir: Path) -> bool:
    """Whether a train run saved a checkpoint (weights or train state) in ``results_dir``."""
    return any(any(results_dir.glob(f"weights/*{suffix}")) for suffix in (".tlt", ".hdf5")) or \
        any(results_dir.glob("train_state/*.state"))


def spec_fingerprint(spec_text: str) -> str:
    """sha256 of what ``spec_text`` says about training: its tokens (a YAML spec: its values)
    without ``TRAINING_NEUTRAL_FIELDS``; the raw text's when it is neither YAML nor protobuf text."""
    import yaml

    try:
        document = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        document = None
    if isinstance(document, dict):
        canonical = json.dumps(_without_neutral(document, ""), sort_keys=True, default=str)
    else:
        tokens = _proto_tokens(spec_text)
        canonical = spec_text if tokens is None else "\n".join(_without_neutral_tokens(tokens))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _without_neutral(mapping: dict, prefix: str) -> dict:
    kept = {}
    for name, value in mapping.items():
        path = f"{prefix}{name}"
        if path in TRAINING_NEUTRAL_FIELDS:
            continue
        kept[str(name)] = _without_neutral(value, path + ".") if isinstance(value, dict) else value
    return kept


def _proto_tokens(text: str) -> list[str] | None:
    """Protobuf text format's tokens (comments and layout dropped), or None when it does not tokenize."""
    from google.protobuf import text_format

    tokens = []
    try:
        tokenizer = text_format.Tokenizer(text.split("\n"))
        while not tokenizer.AtEnd():
            tokens.append(tokenizer.token)
            tokenizer.NextToken()
    except text_format.ParseError:
        return None
    return tokens


def _without_neutral_tokens(tokens: list[str]) -> list[str]:
    """``tokens`` without the fields of ``TRAINING_NEUTRAL_FIELDS`` (each with its value or block)."""
    kept, path, i = [], [], 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in ("}", ">"):
            if path:
                path.pop()
            token = "}"  # `a < ... >` and `a: { ... }` are `a { ... }`
        elif token.isidentifier() and following in (":", "{", "<"):
            value = i + 2 if following == ":" else i + 1
            field = ".".join([*path, token])
            if value < len(tokens) and tokens[value] in ("{", "<"):
                if field not in TRAINING_NEUTRAL_FIELDS:
                    path.append(token)
                    kept += [token, "{"]
                    i = value + 1
                else:
                    i = _value_end(tokens, value)
                continue
            end = _value_end(tokens, value)
            if field not in TRAINING_NEUTRAL_FIELDS:
                kept += tokens[i:end]
            i = end
            continue
        kept.append(token)
        i += 1
    return kept


def _value_end(tokens: list[str], start: int) -> int:
    """Index just past the value beginning at ``start``: a block or list, a signed number, or
    adjacent string literals (which protobuf text format concatenates)."""
    if start >= len(tokens):
        return start
    if tokens[start] in ("{", "<", "["):
        depth, i = 0, start
        while i < len(tokens):
            depth += tokens[i] in ("{", "<", "[")
            depth -= tokens[i] in ("}", ">", "]")
            i += 1
            if depth == 0:
                break
        return i
    if tokens[start] == "-":
        return start + 2
    i = start + 1
    if tokens[start][:1] in ("'", '"'):
        while i < len(tokens) and tokens[i][:1] in ("'", '"'):
            i += 1
    return i


def prepare_results_dir(results_dir, spec_text: str, force: bool = False, task: str = "") -> Path:
    """Create the results dir, check it is writable and that its checkpoints are this spec's.

    Only a run that wrote a checkpoint claims its dir: a dir whose checkpoints come from a
    different spec is refused unless ``force``, which clears them so the new run starts from
    scratch; a run that failed before its first checkpoint (bad arch, missing data) never
    blocks the corrected one. The marker records this spec for the next run.
    """
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TaoctlError(f"results dir {results_dir} is not writable: {exc.strerror or exc}") from None
    digest = spec_fingerprint(spec_text)
    # Markers written before fingerprints hold the raw text's sha256.
    accepted = {digest, hashlib.sha256(spec_text.encode()).hexdigest()}
    run_file = results_dir / RUN_FILE
    if run_file.exists() and _has_checkpoint(results_dir):
        try:
            previous = json.loads(run_file.read_text()).get("spec_sha256")
        except (ValueError, AttributeError):
            previous = None  # a damaged marker names no spec: the checkpoints are not known to be this one's
        if previous not in accepted:
            if not force:
                raise TaoctlError(f"results dir {results_dir} holds checkpoints of a different spec; "
                                  f"use another -r, or --force to start over there")
            for stale in ("weights", "train_state"):
                shutil.rmtree(results_dir / stale, ignore_errors=True)
            (results_dir / "status.json").unlink(missing_ok=True)
    write_atomic(run_file, json.dumps({"spec_sha256": digest, "task": task}))
    return results_dir
