"""`taoctl spec check <task> FILE...`: load spec files as the task would, without running it.

The task's spec kinds come from ``taoctl.tasks.<package>.spec`` (torch-free by convention,
see ARCHITECTURE.md "Specs"), imported by name so the launcher itself never imports a task.
"""

from __future__ import annotations

import importlib

import click

from taoctl.engine.spec import check_file
from taoctl.errors import SpecError, TaoctlError
from taoctl.launcher import registry


def spec_module(task_name: str):
    """The task's spec module, or a TaoctlError saying the task reads no spec files yet."""
    task = registry.get_task(task_name)
    path = registry.TASKS_DIR / task.package / "spec.py" if task.package else None
    if path is None or not path.is_file():
        with_specs = [t.name for t in registry.TASKS
                      if t.package and (registry.TASKS_DIR / t.package / "spec.py").is_file()]
        raise TaoctlError(f"taoctl does not read {task.name} spec files yet; tasks with spec files: "
                          f"{', '.join(with_specs) or 'none'}")
    return importlib.import_module(f"taoctl.tasks.{task.package}.spec")


@click.command(name="check")
@click.argument("task")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--subtask", default=None,
              help="Also require the values this subtask needs (e.g. train, evaluate).")
def check(task, files, subtask):
    """Check spec FILES as TASK reads them: `OK FILE (kind)` or `FILE:LINE:COL: error` each.

    Each file's kind (experiment, dataset_convert, ...) is picked by its top-level fields.
    Exit status 0 only when every file loads.
    """
    module = spec_module(task)
    if subtask is not None and subtask not in registry.get_task(task).subtasks:
        raise TaoctlError(f'unknown subtask "{subtask}" for {task}; subtasks: '
                          f"{', '.join(registry.get_task(task).subtasks)}")
    failed = 0
    for path in files:
        warnings: list[str] = []
        try:
            kind, _ = check_file(path, module.KINDS, on_warning=warnings.append, subtask=subtask)
        except SpecError as exc:
            failed += 1
            click.echo(str(exc))
            continue
        click.echo(f"OK {path} ({kind.name})")
        for warning in warnings:
            click.echo(f"  {warning}")
    if len(files) > 1:
        click.echo(f"{len(files) - failed} of {len(files)} spec files OK")
    return 2 if failed else 0
