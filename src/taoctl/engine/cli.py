"""Command-line pieces every task's entrypoint shares (click, no torch at import).

Each subtask module under ``taoctl/tasks/<task>/scripts/`` exposes ``command``, a click
command built with these helpers, so flags, help and errors look the same everywhere:
``-e`` for the spec, TAO's multi-letter short flags (``-pth``, ``-eq``), options that take
several values after one flag (``--gpu_index 0 1``, ``-el a b``), and the flags TAO's
entrypoint wrapper adds to every subtask (``--gpus``, ``--use_amp``, ``--log_file`` ...).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

import click

from taoctl.errors import TaoctlError
from taoctl.fileio import out_of_space_message
from taoctl.text import is_number

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class MultiValueOption(click.Option):
    """An option that takes every value up to the next flag, as argparse's nargs='*'/'+' does.

    TAO users type ``--gpu_index 0 1`` and ``-el conv1 block_2a``; click alone would want the
    flag repeated. ``multiple=True`` must be set; repeating the flag also works.
    """

    def __init__(self, *args, at_least_one: bool = True, **kwargs):
        kwargs.setdefault("multiple", True)
        self.at_least_one = at_least_one
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        option_names = set(self.opts)
        for name in self.opts:
            parser_option = parser._long_opt.get(name) or parser._short_opt.get(name)
            if parser_option is None:
                continue
            original_process = parser_option.process
            prefixes = parser._opt_prefixes

            def process(value, state, _original=original_process, _self=self):
                def is_flag(text):  # "-1" and "-0.5" are values, not flags
                    return text[:1] in prefixes and len(text) > 1 and not is_number(text)

                values = []
                if value is not None:
                    if is_flag(value):  # click took the next flag as our value: give it back
                        state.rargs.insert(0, value)
                    else:
                        values.append(value)
                while values and state.rargs and not is_flag(state.rargs[0]):
                    values.append(state.rargs.pop(0))
                if not values and _self.at_least_one:
                    raise click.BadOptionUsage(sorted(option_names)[0], f"{sorted(option_names)[-1]} needs a value")
                for v in values:
                    _original(v, state)

            parser_option.process = process
        return None


def spec_option(required: bool = True, names=("-e", "--experiment_spec_file", "--experiment_spec")):
    return click.option(*names, "experiment_spec", required=required, type=click.Path(dir_okay=False),
                        help="Experiment spec file (protobuf text or YAML).")


def key_option():
    return click.option("-k", "--key", default=None,
                        help="Key that encrypts/decrypts model files; omit for unencrypted files.")


def results_dir_option(required: bool = False):
    return click.option("-r", "--results_dir", required=required, type=click.Path(file_okay=False),
                        help="Folder for outputs, logs and status.json.")


def common_options(func, exclude=()):
    """Flags TAO's entrypoint adds to every subtask: devices, processes, AMP, logging; those named in
    ``exclude`` are left out (a subtask declaring its own, e.g. the NeMo tasks' ``-g/--gpus``)."""
    decorators = [
        click.option("--gpus", type=int, default=1, show_default=True,
                     help="GPUs to use; more than one launches one process per GPU (torchrun)."),
        click.option("--gpu_index", cls=MultiValueOption, type=int, help="Indices of the GPUs to use."),
        click.option("-np", "--num_processes", type=int, default=-1,
                     help="Processes to launch (DDP); on CPU this is how to run data-parallel."),
        click.option("--num_nodes", type=int, default=1, show_default=True, help="Nodes for multi-node DDP."),
        click.option("--node_rank", type=int, default=0, show_default=True, help="This node's rank."),
        click.option("--master_addr", default=None, help="Address of the rank-0 node (multi-node)."),
        click.option("--master_port", type=int, default=None, help="Port of the rank-0 node (multi-node)."),
        click.option("--use_amp", is_flag=True, help="Automatic mixed precision (GPU only)."),
        click.option("--log_file", type=click.Path(dir_okay=False), default=None,
                     help="Also write the log to this file."),
        click.option("--dry-run", "--dry_run", "dry_run", is_flag=True,
                     help="Parse the spec, check the paths it names, print the plan and exit."),
        click.option("-v", "--verbose", is_flag=True, help="Show debug output and tracebacks."),
    ]
    for decorator in reversed(decorators):
        if not set(option_names(decorator)) & set(exclude):
            func = decorator(func)
    return func


def option_names(decorator) -> tuple[str, ...]:
    """The flag names a click.option decorator declares (applied to a throwaway function to read them)."""
    probe = decorator(lambda: None)
    return tuple(name for param in probe.__click_params__ for name in param.opts)


# The signal (SIGINT or SIGTERM) that is ending this run, once one arrived; see handle_interrupts.
_interrupt_signal: int | None = None


class Interrupted(TaoctlError):
    """A run ended by Ctrl-C or SIGTERM: ``<what> interrupted``, exit 128 + the signal, as shells report it."""

    def __init__(self, what: str, signum: int):
        super().__init__(f"{what} interrupted", exit_code=128 + signum)


def interrupt_signal() -> int | None:
    """The signal that interrupted this run (see :func:`handle_interrupts`), or None."""
    return _interrupt_signal


def handle_interrupts() -> None:
    """Take SIGINT and SIGTERM as an interrupt: record the signal, then raise KeyboardInterrupt.

    `taoctl stop` and a launcher passing on Ctrl-C signal the run's whole process group, so a
    subtask's KeyboardInterrupt lets the trainer and the runners write status.json's FAILURE line and
    context managers remove their temporary files. The recorded signal tells an interrupt apart
    from the exception a library may turn it into (torch's exporter wraps it in its own error) and
    gives the exit status (130, 143).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_interrupt)
    sys.unraisablehook = _interrupt_in_finalizer


def _interrupt_in_finalizer(unraisable, _default=sys.unraisablehook):
    """An interrupt raised inside a finalizer (a ``__del__`` that ran when the signal came) is swallowed
    there with an "Exception ignored" traceback; raise it again in the main thread instead."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        _thread.interrupt_main(_interrupt_signal or signal.SIGINT)
        return
    _default(unraisable)


@contextlib.contextmanager
def deferred_interrupts():
    """Hold SIGINT/SIGTERM back inside the block, then take the first one as :func:`handle_interrupts` does.

    For library calls that run Python callbacks from C++ (torch's ONNX exporter): a KeyboardInterrupt
    raised inside them crashed the process (SIGSEGV) or surfaced as another exception. The block is
    left before the interrupt takes effect, so ``taoctl stop`` waits for one export step at most.
    """
    pending: list[int] = []

    def hold(signum, _frame):
        _record_interrupt(signum)  # known at once: a library may end the block with an error of its own
        pending.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending:
        handler = previous[pending[0]]
        if callable(handler):
            handler(pending[0], None)
        else:  # the default action (or none, when ignored), as if it arrived now
            os.kill(os.getpid(), pending[0])


@contextlib.contextmanager
def temporary_directory(parent: str | os.PathLike | None = None, prefix: str | None = None):
    """A temporary folder (in ``parent``) removed when the block ends, that no interrupt leaves behind.

    tempfile.TemporaryDirectory has a gap between creating the folder and the ``with`` taking
    charge of it: an interrupt that landed there (``taoctl stop`` at the moment an export began)
    left the folder beside the outputs.
    """
    folder = None
    try:
        with deferred_interrupts():
            folder = tempfile.mkdtemp(dir=parent, prefix=prefix)
        yield folder
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _on_interrupt(signum, frame):
    _record_interrupt(signum)
    if _importing(frame):
        # An extension module's initialisation (onnx's nanobind module) calls Python from C++: a
        # KeyboardInterrupt raised there aborted the process or crashed it (SIGSEGV). It is raised
        # again, in the main thread, once the import is done.
        threading.Thread(target=_interrupt_after_import, args=(signum,), daemon=True).start()
        return
    raise KeyboardInterrupt


def _importing(frame) -> bool:
    """Whether ``frame`` (of the main thread) runs inside an import."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _interrupt_after_import(signum: int) -> None:
    main = threading.main_thread().ident
    while _importing(sys._current_frames().get(main)):
        time.sleep(0.01)
    _thread.interrupt_main(signum)  # runs _on_interrupt again, as if the signal came now


def _record_interrupt(signum: int) -> None:
    """Keep the first interrupting signal: it names the exit status whatever exception follows."""
    global _interrupt_signal
    if _interrupt_signal is None:
        _interrupt_signal = signum
        # The DataLoader workers got the same signal and die of it; torch's SIGCHLD handler would then
        # raise "DataLoader worker ... is killed by signal" in place of this interrupt. Python would
        # report a pending SIGCHLD set back to SIG_DFL as a race, so a handler that does nothing.
        signal.signal(signal.SIGCHLD, _ignore_signal)


def _ignore_signal(_signum, _frame):
    return None


def run_command(command: click.Command, args: list[str], prog_name: str) -> int:
    """Run a click command the way every taoctl entrypoint does: one line per error.

    A TaoctlError or a usage error prints one line and returns its exit code; an unexpected
    exception prints one line too, and its traceback only with -v / TAOCTL_DEBUG=1. An
    interrupt (Ctrl-C, SIGTERM), whatever exception it became, is ``taoctl: interrupted`` (the
    runners name the subtask) with 128 + the signal.
    """
    verbose = "-v" in args or "--verbose" in args or os.environ.get("TAOCTL_DEBUG") == "1"
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt, Exception) as exc:
        return _report(exc, verbose)
    # A command may return its exit status (the launcher returns its child's).
    return result if isinstance(result, int) else 0


def _report(exc: BaseException, verbose: bool) -> int:
    """Print the one line for ``exc`` and return the exit status."""
    if isinstance(exc, (click.Abort, KeyboardInterrupt)) or (_interrupt_signal and not isinstance(exc, Interrupted)):
        if verbose and not isinstance(exc, (click.Abort, KeyboardInterrupt)):
            traceback.print_exc()
        click.echo("taoctl: interrupted", err=True)
        return 128 + (_interrupt_signal or signal.SIGINT)
    if isinstance(exc, click.ClickException):
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
        click.echo(f"taoctl: {exc.format_message()}", err=True)
        return exc.exit_code
    if verbose:
        traceback.print_exc()
    if isinstance(exc, TaoctlError):
        click.echo(f"taoctl: {exc}", err=True)
        return exc.exit_code
    # A bug: say what happened in one line, the trace on request; unless it is a full disk met
    # outside fileio's helpers (they raise OutOfSpaceError).
    no_space = out_of_space_message(exc) if isinstance(exc, OSError) else None
    if no_space:
        click.echo(f"taoctl: {no_space}", err=True)
        return TaoctlError.exit_code
    click.echo(f"taoctl: internal error: {type(exc).__name__}: {exc} (rerun with -v for the traceback)", err=True)
    return 1


def echo(message: str = "") -> None:
    click.echo(message)
    sys.stdout.flush()


def finish_dry_run(spec_path, spec, kind, flag_paths: dict[str, str | None] | None = None, fields=None) -> int:
    """End a ``--dry-run``: the spec already loaded; check the paths it and the flags name.

    ``flag_paths`` maps a flag to the path given for it (``{"-m": model_path}``); unset ones are
    skipped. ``fields`` limits the spec's path fields checked (default: all of the kind's).
    Every missing path is listed, then one TaoctlError line says how many.
    """
    from taoctl.engine.spec import missing_paths

    problems = missing_paths(spec, kind, fields)
    problems += [f"{flag}: {path} does not exist" for flag, path in (flag_paths or {}).items()
                 if path and not os.path.exists(path)]
    for problem in problems:
        click.echo(f"{spec_path}: {problem}", err=True)
    if problems:
        raise TaoctlError(f"dry run: {len(problems)} path(s) named by {spec_path} or the flags do not exist")
    echo(f"Dry run OK: {spec_path} parses and every path it names exists.")
    return 0
