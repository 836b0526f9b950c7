"""The `taoctl` command: TAO's launcher interface, without torch.

``taoctl <task> <subtask> [args]`` (TAO <= 4), ``taoctl model|dataset|deploy <task> <action>``
(TAO 5), ``taoctl <task> run <cmd...>``, and the control commands ``info``, ``list``, ``stop``,
``spec check``. A subtask's own flags are parsed by its entrypoint in the runtime, the way
TAO passes them into the container; the launcher only takes its own flags out first.
"""

from __future__ import annotations

import os
import shlex
import sys

import click

from taoctl import __version__
from taoctl.engine.cli import MultiValueOption, run_command
from taoctl.errors import TaoctlError, did_you_mean
from taoctl.launcher import images, jobs, registry, speccheck
from taoctl.launcher.entrypoint import CLI_GROUP_ENV, PROG_ENV
from taoctl.launcher.runtime import docker as docker_runtime
from taoctl.launcher.runtime import local

RUNTIMES = ("local", "docker")
DEFAULT_RUNTIME = "local"


class TaoctlGroup(click.Group):
    """A group whose unknown commands are tried as task names, with did-you-mean."""

    def __init__(self, *args, cli_group: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cli_group = cli_group

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        try:
            task = registry.get_task(cmd_name, self.cli_group)
        except TaoctlError:
            return None
        return TaskCommand(task, name=cmd_name)

    def resolve_command(self, ctx, args):
        name = args[0]
        command = self.get_command(ctx, name)
        if command is None and not ctx.resilient_parsing:
            choices = list(self.commands) + registry.task_names(self.cli_group)
            ctx.fail(f'unknown task or command "{name}"{did_you_mean(name, choices)}; '
                     f"`taoctl info --verbose` lists the tasks")
        return name, command, args[1:]

    def format_commands(self, ctx, formatter):
        super().format_commands(ctx, formatter)
        names = registry.task_names(self.cli_group)
        with formatter.section("Tasks (taoctl <task> <subtask> --help for flags)"):
            formatter.write_text(", ".join(names))


class TaskCommand(click.Command):
    """`taoctl <task> ...`: picks the subtask and hands it to the runtime."""

    def __init__(self, task: registry.Task, name: str):
        super().__init__(name=name, context_settings={"ignore_unknown_options": True,
                                                      "allow_extra_args": True,
                                                      "help_option_names": []},
                         add_help_option=False, help=f"Run a {task.name} subtask.")
        self.task = task

    def invoke(self, ctx):
        args = list(ctx.args)
        task = self.task
        if task.direct:
            subtask = task.name
        elif not args or args[0] in ("-h", "--help"):
            click.echo(deploy_help(task) if _in_deploy_group(ctx) else task_help(task))
            return 0
        else:
            subtask, args = args[0], args[1:]
        typed = subtask
        if not task.direct and _in_deploy_group(ctx):  # deploy.<action>: the module scripts/deploy/<action>.py
            subtask = f"{registry.DEPLOY}.{subtask}"
        runtime_name, args = _take_launcher_flags(args, ctx.find_root().params.get("runtime"))
        docker_options, args = docker_runtime.take_flags(args)
        # --image only before the task: after it, `-i/--image` is classification inference's.
        root = ctx.find_root().params
        docker_options = {k: root[k] for k in ("image", "mounts", "auto_mount") if root.get(k)} | docker_options
        if subtask == "run":
            if not args:
                raise TaoctlError(f"`taoctl {task.name} run` needs a command to run")
            return _run(runtime_name, list(args), task.name, "run", args, docker_options)
        task.check_subtask(subtask)
        # Help and usage lines name the command as the user typed it (TAO 4 or TAO 5 form).
        os.environ[PROG_ENV] = ctx.command_path if task.direct else f"{ctx.command_path} {typed}"
        cli_group = getattr(ctx.parent.command, "cli_group", None) if ctx.parent else None
        if cli_group:
            os.environ[CLI_GROUP_ENV] = cli_group
        else:
            os.environ.pop(CLI_GROUP_ENV, None)
        command = local.entrypoint_command(task.name, subtask, args)
        if "--dry-run" in args or "--dry_run" in args:
            # The plan is the launcher's to tell; the subtask then checks its spec and paths.
            if runtime_name == "docker":  # ... in its container, where the spec's paths are
                click.echo(docker_runtime.plan_text(task.name, subtask, args, **docker_options))
                return _run(runtime_name, command, task.name, subtask, args, docker_options)
            click.echo(plan_text(runtime_name, task, command))
            return local.run(command, task.name, subtask, args)
        return _run(runtime_name, command, task.name, subtask, args, docker_options)


def _take_launcher_flags(args: list[str], root_runtime: str | None) -> tuple[str, list[str]]:
    runtime_name = root_runtime or os.environ.get("TAOCTL_RUNTIME") or DEFAULT_RUNTIME
    rest: list[str] = []
    i = 0
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        if flag == "--runtime":
            if inline:
                runtime_name = inline
            elif i + 1 < len(args):
                runtime_name = args[i + 1]
                i += 1
            else:
                raise TaoctlError("--runtime needs a value: " + ", ".join(RUNTIMES))
        else:
            rest.append(args[i])
        i += 1
    if runtime_name not in RUNTIMES:
        raise TaoctlError(f'unknown runtime "{runtime_name}"{did_you_mean(runtime_name, RUNTIMES)}; '
                          f"runtimes: {', '.join(RUNTIMES)}")
    return runtime_name, rest


def _run(runtime_name: str, command: list[str], task: str, subtask: str, args: list[str],
         docker_options: dict | None = None) -> int:
    if runtime_name == "docker":
        return docker_runtime.run(task, subtask, args, **(docker_options or {}))
    if docker_options:
        raise TaoctlError(f"{', '.join(docker_runtime.FLAGS)} apply to the docker runtime: add --runtime docker")
    docker_runtime.announce_local()
    return local.run(command, task, subtask, args)


def plan_text(runtime_name: str, task: registry.Task, command: list[str]) -> str:
    return "\n".join(["Plan (dry run, nothing is executed):",
                      f"  runtime: {runtime_name}",
                      f"  image:   {image_for(task)} (used by the docker runtime)",
                      "  mounts:  none (the local runtime runs on this machine's paths)",
                      f"  command: {shlex.join(command)}"])


def task_help(task: registry.Task) -> str:
    lines = [f"Usage: taoctl {task.name} SUBTASK [ARGS]...", "",
             f"  {task.name} ({task.group}); image {image_for(task)}", "", "Subtasks:"]
    implemented = set(task.implemented_subtasks)
    for subtask in task.subtasks:
        state = "" if subtask in implemented else "  (planned)"
        lines.append(f"  {subtask}{state}")
    lines.append("  run <cmd...>  run a command in the task's environment")
    lines += ["", f"`taoctl {task.name} SUBTASK --help` lists the subtask's flags."]
    return "\n".join(lines)


def _in_deploy_group(ctx: click.Context) -> bool:
    return ctx.parent is not None and getattr(ctx.parent.command, "cli_group", None) == registry.DEPLOY


def deploy_help(task: registry.Task) -> str:
    lines = [f"Usage: taoctl deploy {task.name} ACTION [ARGS]...", "",
             f"  {task.name}: TensorRT engines (TAO 5's tao-deploy); image {image_for(task)}", "", "Actions:"]
    lines += [f"  {action}" for action in task.deploy_actions]
    lines += ["", f"`taoctl deploy {task.name} ACTION --help` lists the action's flags."]
    return "\n".join(lines)


def image_for(task: registry.Task) -> str:
    return images.image_for(task)


@click.group(cls=TaoctlGroup, context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None, envvar="TAOCTL_RUNTIME",
              help="Where subtasks run (default: local).")
@click.option("--image", default=None, help="docker runtime: the image for this run (default: the task's).")
@click.option("--mounts", default=None, help="docker runtime: mounts file (default $LAUNCHER_MOUNTS, "
                                             "~/.tao_mounts.json); also accepted after the task.")
@click.option("--auto-mount", "auto_mount", is_flag=True,
              help="docker runtime: mount paths outside the mounts at the same path; also after the task.")
@click.version_option(__version__, prog_name="taoctl")
@click.pass_context
def cli(ctx, runtime, image, mounts, auto_mount):
    """taoctl: NVIDIA TAO Toolkit's workflow (spec files, train, prune, export) on open PyTorch code."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _usage_without_task(ctx: click.Context) -> None:
    """`taoctl model` alone: its usage, once (click's own no-arguments error printed it twice)."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


for _group in (registry.MODEL, registry.DATASET, registry.DEPLOY):
    cli.add_command(TaoctlGroup(name=_group, cli_group=_group, help=f"TAO 5 form: taoctl {_group} <task> <action>.",
                                invoke_without_command=True, callback=click.pass_context(_usage_without_task)))


@cli.command()
@click.option("--verbose", is_flag=True, help="Also print the task table.")
def info(verbose):
    """Version, runtimes and (with --verbose) every task."""
    click.echo(f"taoctl version: {__version__}")
    docker_state = "reachable" if docker_runtime.reachable() else "not reachable"
    click.echo(f"runtimes: local (available), docker ({docker_state} at {docker_runtime.socket_url()})")
    if not verbose:
        return
    click.echo("")
    click.echo(f"{'task':<38}{'group':<16}{'image':<28}{'state':<13}subtasks")
    for task in registry.TASKS:
        state = _task_state(task)
        names = [s if s in task.implemented_subtasks else f"{s}*" for s in task.subtasks]
        alias = f" ({', '.join(task.aliases)})" if task.aliases else ""
        click.echo(f"{task.name + alias:<38}{task.group:<16}{image_for(task):<28}{state:<13}{' '.join(names)}")
    click.echo("\n* planned subtask; partial: some of the task's subtasks are implemented\n")
    click.echo("\n".join(images.status_lines()))


def _task_state(task: registry.Task) -> str:
    """implemented (every TAO subtask), partial (some) or planned (none)."""
    implemented = set(task.implemented_subtasks)
    if not implemented:
        return "planned"
    return "implemented" if implemented >= set(task.tao_subtasks) else "partial"


@cli.command(name="list")
def list_jobs():
    """Running jobs of this user, with each one's results dir and command."""
    running = jobs.running_jobs()
    if docker_runtime.reachable():
        running += docker_runtime.list_containers()
    click.echo(f"{'id':<24}{'task':<20}{'subtask':<18}{'status':<10}{'started':<21}{'results_dir':<32}  command")
    for job in running:
        click.echo(f"{job['id']:<24}{job['task']:<20}{job['subtask']:<18}{job['status']:<10}{job['started']:<21}"
                   f"{job['results_dir'] or '-':<32}  {job['command']}")


@cli.command()
@click.option("--container_id", "ids", cls=MultiValueOption,
              help="Ids of the jobs or containers to stop (`taoctl list` shows them).")
@click.option("--all", "stop_all", is_flag=True, help="Stop every running job of this user.")
def stop(ids, stop_all):
    """Stop running jobs of this user."""
    if not ids and not stop_all:
        raise TaoctlError("say which jobs to stop: --container_id ID ... or --all")
    running = {job["id"]: job for job in jobs.running_jobs()}
    if docker_runtime.reachable():
        running.update({job["id"]: job for job in docker_runtime.list_containers()})
        # A docker container may be named by any prefix of its id, as docker allows.
        short = [j for j, job in running.items() if job["runtime"] == docker_runtime.NAME]
        ids = [next((j for j in short if len(i) >= 4 and (j.startswith(i) or i.startswith(j))), i) for i in ids]
    chosen = list(running) if stop_all else list(dict.fromkeys(ids))
    unknown = [i for i in chosen if i not in running]
    if unknown:
        raise TaoctlError(f"no running job {', '.join(unknown)}; `taoctl list` shows the running ones")
    for job_id in chosen:
        job = running[job_id]
        if job["runtime"] == docker_runtime.NAME:
            docker_runtime.stop_container(job["container_id"], remove=job["status"] != "running")
        else:
            jobs.stop_job(job)
        click.echo(f"stopped {job_id}")


@cli.group(name="spec")
def spec_group():
    """Spec files: `taoctl spec check <task> FILE...` loads them as the task would."""


spec_group.add_command(speccheck.check)
cli.add_command(images.images_group)


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, sys.argv[1:] if argv is None else argv, prog_name="taoctl")


if __name__ == "__main__":
    sys.exit(main())
