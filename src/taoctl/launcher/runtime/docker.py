"""The docker runtime: the subtask is the command of a container made from its task's image.

What TAO's launcher gets wrong and this does not: the task is the container's command (no
start-then-exec race) given as a list (spaces and quotes survive); host paths in arguments
are translated through the mounts; the container runs as the host user so outputs are the
user's; only the GPUs asked for are exposed; the task's exit status is the launcher's; the
container carries labels so `taoctl list`/`stop` find exactly this user's; Ctrl-C stops and
removes it. The docker SDK is imported lazily so the launcher's other commands stay quick.
"""

from __future__ import annotations

import getpass
import glob
import os
import shlex
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlparse

from taoctl import __version__
from taoctl.errors import TaoctlError
from taoctl.launcher import images, jobs, registry
from taoctl.launcher import mounts as mounts_mod
from taoctl.launcher.entrypoint import CLI_GROUP_ENV, PROG_ENV

NAME = "docker"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
LABEL = "taoctl"  # value: the taoctl version that started the container
STOP_TIMEOUT_S = 10


# Launcher flags for this runtime, taken out of the task's args: {flag: takes a value}. No TAO
# entrypoint has these; `--image` is not one of them because classification inference has it.
FLAGS = {"--mounts": True, "--auto-mount": False}


def take_flags(args: list[str]) -> tuple[dict, list[str]]:
    """Splits ``--mounts FILE --auto-mount`` off the task's args, for :func:`run`."""
    options: dict = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, inline = args[i].partition("=")
        if flag not in FLAGS:
            rest.append(args[i])
        elif not FLAGS[flag]:
            options[flag[2:].replace("-", "_")] = True
        elif eq:
            options[flag[2:]] = inline
        elif i + 1 < len(args):
            options[flag[2:]] = args[i + 1]
            i += 1
        else:
            raise TaoctlError(f"{flag} needs a value")
        i += 1
    return options, rest


def announce_local() -> None:
    """First line of a local run when a TAO user could expect a container."""
    try:
        has_mounts = mounts_mod.find_file() is not None
    except TaoctlError:
        has_mounts = True
    if has_mounts and reachable(timeout=0.2):
        print("taoctl: runtime local (a mounts file and Docker are present; --runtime docker runs "
              "the task in its container)", file=sys.stderr, flush=True)


def socket_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def unreachable_message() -> str:
    return f"Docker daemon not reachable at {socket_url()}; use `--runtime local` or start Docker"


def reachable(timeout: float = 1.0) -> bool:
    """Pings the daemon over its socket without the SDK (keeps `taoctl info` fast)."""
    url = urlparse(socket_url())
    try:
        if url.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = url.path
        elif url.scheme in ("tcp", "http") and not os.environ.get("DOCKER_TLS_VERIFY"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (url.hostname, url.port or 2375)
        else:  # ssh://, TLS ...: leave it to the SDK
            return client_or_none() is not None
        with sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def client():
    """A docker SDK client, or one clear line when the daemon cannot be reached."""
    import docker

    try:
        handle = docker.from_env()
        handle.ping()
    except docker.errors.DockerException as exc:
        raise TaoctlError(unreachable_message()) from exc
    return handle


def client_or_none():
    try:
        return client()
    except TaoctlError:
        return None


def image_exists(handle, name: str) -> bool:
    import docker

    try:
        handle.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


# ---- GPUs --------------------------------------------------------------------------------

def host_gpu_count() -> int:
    return len(glob.glob("/dev/nvidia[0-9]*"))


def _take_values(args: list[str], flag: str) -> list[str] | None:
    """Values of ``flag`` (``--flag v ...`` or ``--flag=v``), or None when absent."""
    for i, arg in enumerate(args):
        if arg == flag:
            values = []
            for value in args[i + 1:]:
                if value.startswith("-"):
                    break
                values.append(value)
            return values
        if arg.startswith(flag + "="):
            return [arg.split("=", 1)[1]]
    return None


def _replace_values(args: list[str], flag: str, new: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        if args[i] == flag:
            out += [flag, *new]
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                i += 1
            continue
        out.append(f"{flag}={','.join(new)}" if args[i].startswith(flag + "=") else args[i])
        i += 1
    return out


def gpu_devices(args: list[str], available: int) -> tuple[list[str] | None, list[str]]:
    """Host GPU ids to expose for ``--gpus N`` / ``--gpu_index I...`` and the args to pass on.

    Inside the container the exposed GPUs are numbered from 0, so ``--gpu_index`` is
    renumbered. With no GPU on the host nothing is exposed and the args pass unchanged.
    """
    if available == 0:
        return None, args
    index = _take_values(args, "--gpu_index")
    gpus = _take_values(args, "--gpus")
    try:
        count = int(gpus[0]) if gpus else 1
        chosen = [int(i) for v in index for i in v.split(",")] if index else list(range(count))
    except ValueError:
        return None, args  # the subtask's own parser reports the bad value
    wrong = [i for i in chosen if not 0 <= i < available]
    if wrong or len(chosen) > available:
        raise TaoctlError(f"asked for GPU(s) {chosen} but this host has {available} "
                          f"(indices 0..{available - 1})")
    if index:
        args = _replace_values(args, "--gpu_index", [str(i) for i in range(len(chosen))])
    return [str(i) for i in chosen], args


# ---- running -----------------------------------------------------------------------------

def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (e.g. inside a container)
        return str(os.getuid())


def container_spec(task: registry.Task, subtask: str, args: list[str], config: mounts_mod.MountsConfig,
                   auto_mount: bool = False, gpu_count: int = 0) -> tuple[dict, list[str]]:
    """The ``containers.create`` arguments for one run, and the notices to print first."""
    from docker.types import DeviceRequest, Mount, Ulimit

    is_run = subtask == "run"
    gpu_ids, task_args = (None, list(args)) if is_run else gpu_devices(list(args), gpu_count)
    translator = mounts_mod.Translator(config.mounts, config.path, auto_mount=auto_mount)
    task_args = translator.translate_args(task_args, strict=not is_run)
    command = task_args if is_run else ["python", "-m", "taoctl.launcher.entrypoint", task.name, subtask,
                                        *task_args]
    options = config.docker_options
    kwargs = dict(
        command=command, detach=True, init=True, stop_signal="SIGINT",
        user=options.get("user") or f"{os.getuid()}:{os.getgid()}",
        # HOME: the host user has no home in the image; caches (matplotlib, torch) go to /tmp.
        # The command form as typed (TAO 4 or TAO 5) travels too: usage lines and file naming follow it.
        environment={"HOME": "/tmp", **{name: os.environ[name] for name in (PROG_ENV, CLI_GROUP_ENV)
                                        if name in os.environ}, **config.envs},
        mounts=[Mount(m.destination, m.source, type="bind") for m in translator.mounts + translator.added],
        labels={LABEL: __version__, "taoctl.task": task.name, "taoctl.subtask": subtask,
                "taoctl.user": _user_name(), "taoctl.uid": str(os.getuid()),
                "taoctl.results_dir": jobs.results_dir_of(subtask, args),
                "taoctl.command": shlex.join(["taoctl", task.name, subtask, *args])},
        tty=bool(options.get("tty", False)),
        privileged=bool(options.get("privileged", False)),
    )
    if translator.working_dir():
        kwargs["working_dir"] = translator.working_dir()
    if "shm_size" in options:
        kwargs["shm_size"] = options["shm_size"]
    if "network" in options:
        kwargs["network_mode"] = options["network"]
    if "ports" in options:
        kwargs["ports"] = options["ports"]
    if "ulimits" in options:
        kwargs["ulimits"] = [Ulimit(name=k, soft=v, hard=v) for k, v in options["ulimits"].items()]
    if gpu_ids:
        kwargs["device_requests"] = [DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]
    elif is_run and gpu_count:  # `run <cmd>` is a shell into the environment: every GPU, as in TAO
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    notices = []
    if not is_run and gpu_ids is None:
        notices.append("no GPU on this host; the task runs on CPU")
    notices += [f"--auto-mount: {m.source} mounted at the same path" for m in translator.added]
    return kwargs, notices


def plan_text(task_name: str, subtask: str, args: list[str], mounts: str | None = None,
              image: str | None = None, auto_mount: bool = False) -> str:
    """What `--dry-run` with the docker runtime would start (no daemon needed)."""
    task = registry.get_task(task_name)
    config = mounts_mod.load(mounts_mod.find_file(mounts))
    kwargs, notices = container_spec(task, subtask, args, config, auto_mount, host_gpu_count())
    requests = kwargs.get("device_requests")
    gpus = (", ".join(requests[0]["DeviceIDs"]) or "all") if requests else "none (CPU)"
    binds = ", ".join(f"{m['Source']} -> {m['Target']}" for m in kwargs["mounts"]) or "none"
    return "\n".join(["Plan (dry run, nothing is executed):",
                      "  runtime: docker",
                      f"  image:   {images.image_for(task, image)}",
                      f"  mounts:  {binds} (from {config.path or 'no mounts file'})",
                      f"  user:    {kwargs['user']}",
                      f"  gpus:    {gpus}",
                      f"  workdir: {kwargs.get('working_dir', 'the image default')}",
                      f"  command: {shlex.join(kwargs['command'])}",
                      *(f"  note:    {n}" for n in notices)])


def run(task_name: str, subtask: str, args: list[str], mounts: str | None = None,
        image: str | None = None, auto_mount: bool = False) -> int:
    """Runs ``taoctl <task> <subtask> args`` (or ``run <cmd>``) in a container; returns its status."""
    import docker

    task = registry.get_task(task_name)
    config = mounts_mod.load(mounts_mod.find_file(mounts))
    kwargs, notices = container_spec(task, subtask, args, config, auto_mount, host_gpu_count())
    image = images.image_for(task, image)
    handle = client()
    if not image_exists(handle, image):
        raise TaoctlError(f"image {image} for {task.name} is not built; build it with "
                          f"`{images.build_command(task.group, image)}`")
    where = f", mounts {config.path}" if config.path else ""
    for line in [f"runtime docker, image {image}{where}", *notices]:
        print(f"taoctl: {line}", file=sys.stderr, flush=True)

    try:
        container = handle.containers.create(image, **kwargs)
    except docker.errors.APIError as exc:
        reason = str(exc.explanation or exc)
        if "device driver" in reason:
            reason += " (GPU containers need the NVIDIA Container Toolkit on this host)"
        raise TaoctlError(f"docker could not create the container: {reason}") from exc
    # Ctrl-C / SIGTERM stop the container from a thread; the output stream then ends by itself.
    # (Raising KeyboardInterrupt into the docker SDK's stream instead could leave it draining the
    # attach socket until the task finished.)
    received = []

    def stop_container(signum, _frame):
        if not received:
            received.append(signum)
            print(f"\ntaoctl: stopping container {container.short_id}", file=sys.stderr, flush=True)
            threading.Thread(target=_quiet, args=(container.stop,), kwargs={"timeout": STOP_TIMEOUT_S},
                             daemon=True).start()

    previous = {s: signal.signal(s, stop_container) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Attached before it starts, so no output is lost and a task that ends at once
        # cannot leave us attaching to a stopped container.
        stream = handle.api.attach(container.id, stdout=True, stderr=True, stream=True, logs=False,
                                   demux=not kwargs["tty"])
        container.start()
        if received:  # the signal came while it was starting
            _quiet(container.stop, timeout=STOP_TIMEOUT_S)
        _stream(stream, kwargs["tty"])
        status = int(container.wait()["StatusCode"])
        return 128 + received[0] if received else status
    except docker.errors.APIError as exc:
        raise TaoctlError(f"docker: {exc.explanation or exc}", exit_code=1) from exc
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _quiet(container.remove, force=True)


def _stream(stream, tty: bool) -> None:
    """Copies the container's output to ours as it comes, stdout and stderr kept apart."""
    for chunk in stream:
        out, err = (chunk, None) if tty else chunk
        if out:
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
        if err:
            sys.stderr.buffer.write(err)
            sys.stderr.flush()


def _quiet(method, **kwargs) -> None:
    import docker

    try:
        method(**kwargs)
    except docker.errors.NotFound:
        pass  # already gone: `taoctl stop` from another shell, or removed by hand
    except docker.errors.APIError as exc:
        if exc.status_code == 409 and "already in progress" in str(exc.explanation):
            return  # being removed by its launcher or another `taoctl stop`: as good as gone
        print(f"taoctl: docker: {exc.explanation or exc}", file=sys.stderr)


# ---- list / stop -------------------------------------------------------------------------

def list_containers() -> list[dict]:
    """This user's taoctl containers, as job records for `taoctl list` (``container_id``: the full id).

    Everything comes from one listing, whose entries carry labels and state: inspecting each
    container afterwards (as the SDK's ``containers.list`` does) fails with 404 for a container
    that ended and was removed in between.
    """
    handle = client()
    rows = []
    for entry in handle.api.containers(all=True, filters={"label": [LABEL, f"taoctl.uid={os.getuid()}"]}):
        labels = entry.get("Labels") or {}
        rows.append({"id": entry["Id"][:12], "container_id": entry["Id"], "runtime": NAME,
                     "task": labels.get("taoctl.task", "?"), "subtask": labels.get("taoctl.subtask", "?"),
                     "status": entry.get("State", "?"),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("Created", 0))),
                     "results_dir": labels.get("taoctl.results_dir", ""), "command": labels.get("taoctl.command", "")})
    return rows


def stop_container(container_id: str, remove: bool) -> None:
    """Stops one container; ``remove`` also removes it (one whose launcher was killed: nothing
    else will). A container that is gone already (it ended since it was listed) is fine."""
    handle = client()
    _quiet(handle.api.stop, container=container_id, timeout=STOP_TIMEOUT_S)
    if remove:
        _quiet(handle.api.remove_container, container=container_id, force=True)
