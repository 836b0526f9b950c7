"""Every implemented task of the registry, through the real `taoctl` command: help, spec check, dry runs.

Parametrised over ``registry.TASKS`` (a task added to the registry is covered without a line
here): each subtask answers ``--help``; each of the task's sample specs (``specs/<task>/``)
passes ``taoctl spec check``; each step of its demo (``specs/<task>/demo.txt``) parses its flags
and spec under ``--dry-run`` on the generated sample data, and either passes or names the one
thing an earlier step would have made.
"""

from __future__ import annotations

import shlex
import shutil

import pytest

from taoctl.launcher import registry

REPO_SPECS = registry.TASKS_DIR.parents[2] / "specs"
IMPLEMENTED = [task for task in registry.TASKS if task.implemented]


def _demo_lines() -> list[list[str]]:
    lines = []
    for task in IMPLEMENTED:
        demo = REPO_SPECS / task.name / "demo.txt"
        if demo.exists():
            lines += [shlex.split(line) for line in demo.read_text().splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
    return lines


def _demo_steps():
    return [pytest.param(argv, id=" ".join(argv[:2])) for argv in _demo_lines()]


def _sample_specs():
    """(task, spec) for each spec a demo step names, and each other file of specs/<task>/ with that task."""
    pairs = {}
    for argv in _demo_lines():
        task = argv[1] if argv[0] in (registry.MODEL, registry.DATASET, registry.DEPLOY) else argv[0]
        for arg in argv:
            if arg.startswith("specs/"):
                pairs[REPO_SPECS.parent / arg] = task
    for task in IMPLEMENTED:
        folder = REPO_SPECS / task.name
        for spec in sorted(folder.glob("*")) if folder.is_dir() else ():
            pairs.setdefault(spec, task.name)
    return [pytest.param(task, spec, id=f"{task}:{spec.name}") for spec, task in sorted(pairs.items())
            if spec.name != "demo.txt"]


@pytest.mark.parametrize("task", IMPLEMENTED, ids=lambda t: t.name)
def test_every_subtask_answers_help(task, taoctl):
    for subtask in task.implemented_subtasks:
        args = (task.name, "--help") if task.direct else (task.name, subtask, "--help")
        result = taoctl(*args)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("task_name, spec", _sample_specs())
def test_sample_specs_pass_spec_check(task_name, spec, taoctl):
    result = taoctl("spec", "check", task_name, spec)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("demo")
    taoctl.run_module("taoctl.engine.data.samples", "--out", root / "demo_runs" / "data", check=True)
    shutil.copytree(REPO_SPECS, root / "specs")
    return root


@pytest.mark.parametrize("argv", _demo_steps())
def test_demo_steps_dry_run(argv, demo_root, taoctl):
    result = taoctl(*argv, "--dry-run", cwd=demo_root)
    assert "Traceback" not in result.stderr
    if result.returncode != 0:
        # A later step's input (a trained model) is an earlier step's output: the dry run names it.
        missing = "does not exist" in result.stderr or "nothing matches" in result.stderr  # a file, a glob
        assert result.returncode == 2 and missing and "demo_runs/" in result.stderr, \
            result.stderr
