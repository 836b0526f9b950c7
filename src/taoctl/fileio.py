"""Writing files so that a reader sees the old files or all the new ones, never a part.

Shared by the launcher, the engine and the tasks (it imports nothing heavy): a run killed
mid-write (SIGKILL, Ctrl-C, a full disk) leaves no half-written checkpoint, report, export or
dataset shard. Files are created as ``open()`` creates them (mode 0666 less the umask, or the
folder's default ACL), so containers and teammates that may read the user's files read ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from taoctl.errors import TaoctlError

#: errno values that mean "this write does not fit": a full disk, a quota, a file size limit.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class OutOfSpaceError(TaoctlError):
    """A write that did not fit (full disk, quota, file size limit), naming the file being written."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{os.strerror(cause.errno).lower()} writing {self.path}")


def out_of_space_message(exc: OSError) -> str | None:
    """The one line for an OSError that is a full disk / quota / size limit, else None."""
    if exc.errno not in NO_SPACE_ERRNOS:
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    return f"{os.strerror(exc.errno).lower()}{where}"


@contextlib.contextmanager
def out_of_space_names(path: str | os.PathLike) -> Iterator[None]:
    """Out of space inside the block is OutOfSpaceError naming ``path``: the file the user asked for,
    not the temporary one a library was writing when the disk filled (it may wrap the OSError too)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise OutOfSpaceError(path, exc) from exc
        raise


def _discard(path: str | os.PathLike) -> None:
    """Remove a file if it is there; never raises, so a cleanup cannot hide the error that caused it."""
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def _create_beside(path: Path) -> Path:
    """A new empty hidden file beside ``path`` that keeps its suffix, created with open()'s mode."""
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp{path.suffix}")
    # O_EXCL: never adopt a file someone else made; 0o666: the kernel applies the umask / default ACL.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


@contextlib.contextmanager
def atomic_paths() -> Iterator[Callable[[str | os.PathLike], Path]]:
    """Outputs that appear together: ``stage(path)`` gives a temporary path beside ``path``.

    When the block succeeds every staged file replaces its target; when it fails none does
    and every temporary is removed (a removal that fails is ignored, the block's error
    propagates). A write that runs out of space raises OutOfSpaceError naming the target
    being written (the last one staged).
    """
    staged: dict[Path, Path] = {}

    def stage(path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.is_dir():  # the rename at the end would fail after all the work
            raise TaoctlError(f"{path} is a folder: name a file to write")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staged[path] = _create_beside(path)
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                raise OutOfSpaceError(path, exc) from exc
            raise
        return staged[path]

    try:
        yield stage
        for path, tmp in staged.items():
            os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS and staged:
            raise OutOfSpaceError(list(staged)[-1], exc) from exc
        raise
    finally:
        for tmp in staged.values():
            _discard(tmp)


@contextlib.contextmanager
def atomic_folders(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """A new empty temporary folder beside each of ``paths``, to fill; they replace ``paths`` together.

    When the block succeeds each temporary folder takes its target's name (an existing target,
    which the caller has decided may go, is removed); when it fails the temporary folders are
    removed and the targets stay as they were. Out of space inside a temporary folder is reported
    with the target's path.
    """
    targets = [Path(p) for p in paths]
    staged: list[Path] = []

    def in_target(path: str | os.PathLike) -> Path:
        for target, tmp in zip(targets, staged):
            if Path(path).is_relative_to(tmp):
                return target / Path(path).relative_to(tmp)
        return Path(path)

    # Folders made here for the targets go again when the block fails: nothing of the run is left.
    made = sorted({a for t in targets for a in (t.parent, *t.parent.parents) if not a.exists()},
                  key=lambda a: len(a.parts), reverse=True)
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.append(target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp"))
            staged[-1].mkdir()  # mode 0777 less the umask, as any folder
        yield list(staged)
        for target, tmp in zip(targets, staged):
            old = target.with_name(f".{target.name}.{secrets.token_hex(8)}.old")
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    except OutOfSpaceError as exc:
        raise OutOfSpaceError(in_target(exc.path), exc.cause) from exc.cause
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise OutOfSpaceError(in_target(exc.filename) if exc.filename else targets[0], exc) from exc
        raise
    finally:
        for tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: after a success it holds the targets


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffix, so libraries that pick the format from the
    name (matplotlib, OpenCV, onnx) write the right one. On an exception it is removed.
    """
    with atomic_paths() as stage:
        yield stage(path)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
