"""Task images: which image runs a task, and `taoctl images build` from the local source.

Each task group (vision, conversational) has one image, ``taoctl/<group>:<version>`` unless
``$TAOCTL_HOME/config.json`` (default ``~/.taoctl/config.json``) says otherwise::

    {"images": {"vision": "registry.example/taoctl-vision:1", "yolo_v4": "my/yolo:dev"}}

A key is a group or a task name (the task wins); ``--image`` overrides both for one run.
The build sends the checkout's source (and an optional wheel folder, for hosts whose builds
cannot reach PyPI) to the daemon as the build context; the docker SDK is imported only here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

import click

from taoctl import __version__
from taoctl.errors import TaoctlError
from taoctl.launcher import jobs, registry

GROUPS = (registry.VISION, registry.CONVERSATIONAL)
SOURCE_ROOT = Path(__file__).resolve().parents[3]
# What the image needs from a checkout; everything else (tests, data, .venv) stays home.
CONTEXT_PATHS = ("pyproject.toml", "constraints.txt", "README.md", "src")


def config_path() -> Path:
    return jobs.taoctl_home() / "config.json"


def _configured_images() -> dict[str, str]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TaoctlError(f"{path}: not valid JSON: {exc}") from exc
    images = data.get("images", {}) if isinstance(data, dict) else None
    if not isinstance(images, dict) or not all(isinstance(v, str) and v for v in images.values()):
        raise TaoctlError(f'{path}: "images" must map a group or task name to an image name')
    return images


def default_image(group: str) -> str:
    return f"taoctl/{group}:{__version__}"


def image_for(task: registry.Task, override: str | None = None) -> str:
    if override:
        return override
    images = _configured_images()
    return images.get(task.name) or images.get(task.group) or default_image(task.group)


def build_command(group: str, tag: str | None = None) -> str:
    """The command that builds a missing image, for error messages."""
    command = f"taoctl images build {group}"
    if tag and tag != default_image(group):
        command += f" --tag {tag}"
    return command


def source_root() -> Path:
    if not (SOURCE_ROOT / "pyproject.toml").is_file() or not (SOURCE_ROOT / "docker").is_dir():
        raise TaoctlError(f"`taoctl images build` needs a taoctl source checkout; {SOURCE_ROOT} is not one "
                          f"(install taoctl with `pip install -e` from a clone)")
    return SOURCE_ROOT


def requirements(root: Path) -> list[str]:
    """pyproject.toml's runtime dependencies and build requirements (no dev extras).

    The build requirements go in too because the image installs taoctl itself without
    build isolation, which would need an index.
    """
    text = (root / "pyproject.toml").read_text()
    if sys.version_info >= (3, 11):
        import tomllib

        data = tomllib.loads(text)
        return list(data["project"]["dependencies"]) + list(data["build-system"]["requires"])
    from importlib import metadata  # Python 3.10: the installed distribution's metadata

    return [r for r in metadata.requires("taoctl") or [] if "extra ==" not in r] + ["setuptools>=68", "wheel"]


def _skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = os.path.basename(info.name)
    if name in ("__pycache__", ".pytest_cache") or name.endswith((".pyc", ".egg-info")):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0  # identical sources give an identical context, so the layer cache holds
    return info


def write_context(out, root: Path, group: str, wheels: Path | None) -> None:
    """A tar build context: the source, the group's Dockerfile, requirements and wheels/."""
    with tarfile.open(fileobj=out, mode="w") as tar:
        for rel in CONTEXT_PATHS:
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel, filter=_skip)
        tar.add(root / "docker" / group / "Dockerfile", arcname="Dockerfile", filter=_skip)
        reqs = ("\n".join(requirements(root)) + "\n").encode()
        info = tarfile.TarInfo("requirements.txt")
        info.size = len(reqs)
        tar.addfile(info, io.BytesIO(reqs))
        folder = tarfile.TarInfo("wheels")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        if wheels is not None:
            for wheel in sorted(wheels.iterdir()):
                if wheel.suffix in (".whl", ".gz", ".zip"):
                    tar.add(wheel, arcname=f"wheels/{wheel.name}", filter=_skip)


def _digest(fileobj, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    fileobj.seek(0)
    for block in iter(lambda: fileobj.read(1 << 20), b""):
        digest.update(block)
    fileobj.seek(0)
    return digest.hexdigest()


def build(group: str, base: str | None, tag: str | None, wheels: str | None, echo=print,
          rebuild: bool = False) -> str:
    """Builds the group's image from this checkout; returns its tag.

    The context is reproducible, so its digest (with the base's name) labels the image: an
    image already built from the same context is reused without sending anything to Docker.
    """
    from taoctl.launcher.runtime import docker as docker_runtime

    if group not in GROUPS:
        raise TaoctlError(f'unknown image group "{group}"; groups: {", ".join(GROUPS)}')
    root = source_root()
    wheel_dir = None
    if wheels:
        wheel_dir = Path(wheels).expanduser().resolve()
        if not wheel_dir.is_dir():
            raise TaoctlError(f"--wheels {wheels}: not a directory")
    tag = tag or default_image(group)
    buildargs = {"BASE": base} if base else {}
    if wheel_dir is not None:
        buildargs["PIP_OPTIONS"] = "--no-index"
    client = docker_runtime.client()
    with tempfile.TemporaryFile() as context:
        write_context(context, root, group, wheel_dir)
        digest = _digest(context, json.dumps(buildargs, sort_keys=True))
        if not rebuild and _built_from(client, tag) == digest:
            echo(f"{tag} is up to date (built from the same source, wheels and base)")
            return tag
        echo(f"building {tag} from {root} (base {base or 'the Dockerfile default'})")
        errors = []
        labels = {"taoctl.group": group, "taoctl.version": __version__, "taoctl.context": digest}
        for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, buildargs=buildargs,
                                      rm=True, forcerm=True, decode=True, labels=labels):
            if "stream" in chunk:
                echo(chunk["stream"].rstrip("\n"))
            elif "error" in chunk:
                errors.append(chunk["error"].strip())
    if errors:
        raise TaoctlError(f"building {tag} failed: {errors[-1]}", exit_code=1)
    echo(f"built {tag}")
    return tag


def _built_from(client, tag: str) -> str | None:
    import docker

    try:
        return (client.images.get(tag).labels or {}).get("taoctl.context")
    except docker.errors.ImageNotFound:
        return None


def status_lines() -> list[str]:
    """For `taoctl info --verbose`: each image the tasks use, and whether it is built here."""
    from taoctl.launcher.runtime import docker as docker_runtime

    used: dict[str, list[registry.Task]] = {}
    for task in registry.TASKS:
        used.setdefault(image_for(task), []).append(task)
    handle = docker_runtime.client_or_none() if docker_runtime.reachable() else None
    lines = [f"images (docker at {docker_runtime.socket_url()}"
             + ("):" if handle else ", not reachable: whether they are built is unknown):")]
    width = max(len(name) for name in used) + 2
    for name, tasks in used.items():
        groups = sorted({t.group for t in tasks})
        if handle is None:
            state = ""
        elif docker_runtime.image_exists(handle, name):
            state = "built"
        else:
            state = f"not built ({build_command(groups[0], name)})"
        lines.append(f"  {name:<{width}}{len(tasks):>3} {'/'.join(groups)} tasks  {state}")
    return lines


@click.group(name="images")
def images_group():
    """The task images of the docker runtime."""


@images_group.command(name="build")
@click.argument("group", type=click.Choice(GROUPS), required=False)
@click.option("--base", default=None, help="Base image (any with Python >= 3.10); default: the Dockerfile's "
                                            "CUDA PyTorch runtime.")
@click.option("--tag", default=None, help="Image name (default taoctl/<group>:<version>).")
@click.option("--wheels", default=None, type=click.Path(file_okay=False),
              help="Folder of wheels to install from instead of PyPI (offline builds).")
@click.option("--rebuild", is_flag=True, help="Build even when the image is up to date.")
def build_cli(group, base, tag, wheels, rebuild):
    """Build the vision and/or conversational image from this checkout."""
    groups = [group] if group else list(GROUPS)
    if tag and len(groups) > 1:
        raise TaoctlError("--tag names one image: say which group to build (vision or conversational)")
    for name in groups:
        build(name, base, tag, wheels, echo=click.echo, rebuild=rebuild)
