"""`~/.tao_mounts.json`: TAO's mounts file, validated, and host paths translated to container paths.

The schema is TAO's (``Mounts``, ``Envs``, ``DockerOptions``) so an existing file works as is;
every error names the file and the entry. Unlike TAO, taoctl translates path arguments typed
as host paths into the container paths they are mounted at, so one command line works in
both runtimes, and a path the container could not see is an error before anything starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from pathlib import Path

from taoctl.errors import TaoctlError, did_you_mean
from taoctl.text import is_number

DEFAULT_FILE = "~/.tao_mounts.json"
ENV_VAR = "LAUNCHER_MOUNTS"

TOP_KEYS = ("Mounts", "Envs", "DockerOptions")
MOUNT_KEYS = ("source", "destination")
ENV_KEYS = ("variable", "value")
DOCKER_OPTION_KEYS = ("user", "ports", "shm_size", "ulimits", "privileged", "network", "tty")

# Container folders a mount must not replace: the image's own files (Python, CUDA, the shell)
# live there; the kernel's folders are refused with everything below them.
SYSTEM_DESTINATIONS = frozenset({"/", "/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
                                 "/run", "/sbin", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/var"})
KERNEL_FOLDERS = ("/proc", "/sys", "/dev")

# Flags whose value is a path even when it is relative (TAO's entrypoints: -e spec, -r results...).
PATH_FLAGS = frozenset({
    "-e", "--experiment_spec", "--experiment_spec_file", "--experiment_spec_path", "-r", "--results_dir",
    "-m", "--model", "--model_path", "-o", "--output", "--output_file", "--output_filename",
    "--output_path", "--output_dir", "-i", "--image", "--image_dir", "--image_folders", "-l",
    "--label_dir", "--label_folders", "-c", "-cm", "--classmap", "--classmap_json", "--log_file", "-a",
    "--cal_image_dir", "--cal_cache_file", "--cal_data_file", "--cal_json_file", "--engine_file", "-d",
    "--data_dir", "--dataset_export_spec",
})
# Of those, the ones naming something the task creates: translated even when missing on the host.
OUTPUT_FLAGS = frozenset({"-r", "--results_dir", "-o", "--output", "--output_file", "--output_filename",
                          "--output_path", "--output_dir", "--log_file", "--cal_cache_file", "--cal_data_file",
                          "--engine_file"})


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str  # absolute host path
    destination: str  # absolute container path


@dataclasses.dataclass
class MountsConfig:
    path: Path | None
    mounts: list[Mount]
    envs: dict[str, str]
    docker_options: dict


def find_file(explicit: str | None = None) -> Path | None:
    """The mounts file in force: ``--mounts``, then ``$LAUNCHER_MOUNTS``, then ``~/.tao_mounts.json``."""
    chosen = explicit or os.environ.get(ENV_VAR)
    if chosen:
        path = Path(chosen).expanduser().absolute()
        origin = "--mounts" if explicit else f"${ENV_VAR}"
        if path.is_dir():
            raise TaoctlError(f"mounts file {path} (from {origin}) is a directory, not a JSON file")
        if not path.is_file():
            raise TaoctlError(f"mounts file {path} (from {origin}) does not exist")
        return path
    default = Path(DEFAULT_FILE).expanduser()
    return default if default.is_file() else None


def load(path: Path | None) -> MountsConfig:
    """Reads and validates a mounts file; ``None`` gives an empty configuration."""
    if path is None:
        return MountsConfig(None, [], {}, {})
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise TaoctlError(f"cannot read mounts file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise TaoctlError(f"{path}: not valid JSON: {exc}") from exc
    return parse(data, str(path))


def _unknown_keys(where: str, mapping: dict, allowed: tuple[str, ...]) -> None:
    for key in mapping:
        if key not in allowed:
            raise TaoctlError(f'{where}: unknown key "{key}"{did_you_mean(key, allowed)}; '
                              f"allowed: {', '.join(allowed)}")


def parse(data, name: str) -> MountsConfig:
    if not isinstance(data, dict):
        raise TaoctlError(f"{name}: the top level must be a JSON object with {', '.join(TOP_KEYS)}")
    _unknown_keys(name, data, TOP_KEYS)
    if "Mounts" not in data:
        raise TaoctlError(f'{name}: "Mounts" is required (a list of {{"source": ..., "destination": ...}})')
    mounts = _parse_mounts(data["Mounts"], name)
    envs = _parse_envs(data.get("Envs", []), name)
    options = _parse_docker_options(data.get("DockerOptions", {}), name)
    return MountsConfig(Path(name), mounts, envs, options)


def _parse_mounts(entries, name: str) -> list[Mount]:
    if not isinstance(entries, list):
        raise TaoctlError(f'{name}: "Mounts" must be a list of {{"source": ..., "destination": ...}}')
    mounts = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"{name}: Mounts[{i}]"
        if not isinstance(entry, dict):
            raise TaoctlError(f'{where}: must be an object {{"source": ..., "destination": ...}}')
        _unknown_keys(where, entry, MOUNT_KEYS)
        for key in MOUNT_KEYS:
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise TaoctlError(f'{where}: "{key}" is required and must be a path string')
        source = os.path.abspath(os.path.expanduser(entry["source"]))
        if not os.path.exists(source):
            raise TaoctlError(f'{where}: source "{entry["source"]}" does not exist on this host')
        destination = entry["destination"]
        if not destination.startswith("/"):
            raise TaoctlError(f'{where}: destination "{destination}" must be an absolute container path')
        destination = posixpath.normpath("/" + destination.lstrip("/"))  # normpath keeps a leading "//"
        if destination in SYSTEM_DESTINATIONS or any(_under(destination, root) is not None for root in KERNEL_FOLDERS):
            raise TaoctlError(f'{where}: destination "{destination}" would hide the container\'s own system '
                              f'folder; mount at a folder of its own, e.g. /workspace/tao-experiments')
        if destination in seen:
            raise TaoctlError(f'{where}: destination "{destination}" is already used by Mounts[{seen[destination]}]')
        seen[destination] = i
        mounts.append(Mount(source, destination))
    return mounts


def _parse_envs(entries, name: str) -> dict[str, str]:
    if not isinstance(entries, list):
        raise TaoctlError(f'{name}: "Envs" must be a list of {{"variable": ..., "value": ...}}')
    envs = {}
    for i, entry in enumerate(entries):
        where = f"{name}: Envs[{i}]"
        if not isinstance(entry, dict):
            raise TaoctlError(f'{where}: must be an object {{"variable": ..., "value": ...}}')
        _unknown_keys(where, entry, ENV_KEYS)
        variable, value = entry.get("variable"), entry.get("value")
        if not isinstance(variable, str) or not variable or "=" in variable:
            raise TaoctlError(f'{where}: "variable" is required and must be a name without "="')
        if value is None or isinstance(value, (dict, list)):
            raise TaoctlError(f'{where}: "value" is required and must be a string or number')
        envs[variable] = str(value).lower() if isinstance(value, bool) else str(value)
    return envs


def _parse_docker_options(options, name: str) -> dict:
    where = f"{name}: DockerOptions"
    if not isinstance(options, dict):
        raise TaoctlError(f"{where} must be an object with keys among {', '.join(DOCKER_OPTION_KEYS)}")
    _unknown_keys(where, options, DOCKER_OPTION_KEYS)
    checked = {}
    for key, value in options.items():
        if key in ("privileged", "tty"):
            if not isinstance(value, bool):
                raise TaoctlError(f'{where}.{key} must be true or false, not {json.dumps(value)}')
        elif key in ("user", "network"):
            if not isinstance(value, str) or not value:
                raise TaoctlError(f'{where}.{key} must be a non-empty string such as '
                                  f'{"1000:1000" if key == "user" else "host"}')
        elif key == "shm_size":
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not _is_size(value):
                raise TaoctlError(f'{where}.shm_size must be a size such as "16G", not {json.dumps(value)}')
        elif key == "ports":
            if not isinstance(value, dict):
                raise TaoctlError(f'{where}.ports must map "container_port/proto" to a host port, '
                                  f'e.g. {{"8888/tcp": 8888}}')
            for port, host in value.items():
                if not _is_port_spec(port) or not (host is None or _is_port(host)):
                    raise TaoctlError(f'{where}.ports: "{port}": {json.dumps(host)} is not '
                                      f'"container_port[/tcp|udp]": host_port')
        elif key == "ulimits":
            if not isinstance(value, dict):
                raise TaoctlError(f'{where}.ulimits must map a limit name to a number, e.g. {{"memlock": -1}}')
            for limit, number in value.items():
                if isinstance(number, bool) or not isinstance(number, int):
                    raise TaoctlError(f'{where}.ulimits.{limit} must be an integer (-1 for unlimited)')
        checked[key] = value
    return checked


def _is_size(value) -> bool:
    if isinstance(value, int):
        return value > 0
    text = value.strip().lower().rstrip("b")
    if text and text[-1] in "kmg":
        text = text[:-1]
    return text.isdigit() and int(text) > 0


def _is_port(value) -> bool:
    return not isinstance(value, bool) and str(value).isdigit() and 0 < int(value) < 65536


def _is_port_spec(text: str) -> bool:
    port, _, proto = text.partition("/")
    return _is_port(port) and proto in ("", "tcp", "udp", "sctp")


def _under(path: str, root: str) -> str | None:
    """The part of ``path`` below ``root`` ('' for root itself), or None when outside it."""
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def to_container(host_path: str, mounts: list[Mount]) -> str | None:
    """The container path of a host path, through the deepest mount containing it."""
    best = None
    for mount in mounts:
        rest = _under(host_path, mount.source)
        if rest is not None and (best is None or len(mount.source) > len(best[0].source)):
            best = (mount, rest)
    if best is None:
        return None
    mount, rest = best
    return posixpath.join(mount.destination, rest) if rest else mount.destination


def is_container_path(path: str, mounts: list[Mount]) -> bool:
    return any(_under(path, m.destination) is not None for m in mounts)


class Translator:
    """Rewrites a subtask's path arguments from host paths to container paths.

    An absolute argument (also as the value of a Hydra override ``key=/path``), or the value
    of a path flag (``-e``, ``-r`` ...) that exists on the host or names an output, is a path
    argument. A host path under a mount source becomes its
    container path; a path already under a mount destination passes unchanged; any other path
    is an error naming it and the mounts, or with ``auto_mount`` is mounted at the same path.
    """

    def __init__(self, mounts: list[Mount], mounts_file: Path | None, auto_mount: bool = False,
                 cwd: str | None = None):
        self.mounts = list(mounts)
        self.mounts_file = mounts_file
        self.auto_mount = auto_mount
        self.cwd = cwd or os.getcwd()
        self.added: list[Mount] = []

    def translate_args(self, args: list[str], strict: bool = True) -> list[str]:
        """``strict=False`` (for ``run <cmd>``) only rewrites host paths inside mounts."""
        out: list[str] = []
        flag = None  # the path flag whose values we are reading, if any
        for arg in args:
            if arg.startswith("-") and len(arg) > 1 and not is_number(arg):
                name, eq, value = arg.partition("=")
                flag = name if name in PATH_FLAGS else None
                if eq:
                    out.append(f"{name}={self._value(value, name, strict)}")
                    flag = None
                else:
                    out.append(arg)
                continue
            key, eq, value = arg.partition("=")
            if eq and value.startswith("/") and key.replace(".", "_").isidentifier():
                # A TAO 5 / Hydra override such as results_dir=/path or dataset.train_dir=/path.
                out.append(f"{key}={self._value(value, key, strict)}")
                continue
            out.append(self._value(arg, flag, strict))
            if flag in OUTPUT_FLAGS:
                flag = None  # output flags take one value; input flags may take several
        return out

    def _value(self, value: str, flag: str | None, strict: bool) -> str:
        if not value:
            return value
        if value.startswith("/"):
            host = os.path.normpath(value)
        elif flag is not None and (flag in OUTPUT_FLAGS or os.path.exists(os.path.join(self.cwd, value))):
            host = os.path.normpath(os.path.join(self.cwd, value))
        else:
            return value
        translated = to_container(host, self.mounts + self.added)
        if translated is not None:
            return translated
        if is_container_path(host, self.mounts) or not strict:
            return value
        if self.auto_mount:
            self._mount_same_path(host, flag)
            return host
        raise TaoctlError(self._outside_message(value))

    def _mount_same_path(self, host: str, flag: str | None) -> None:
        # Mount the directory itself, or for a file / something not created yet, the nearest
        # existing parent directory, so that the task can create it.
        target = host if os.path.isdir(host) else os.path.dirname(host)
        while not os.path.isdir(target):
            target = os.path.dirname(target)
        if target == "/":
            raise TaoctlError(f"--auto-mount will not mount / for {flag or 'argument'} {host}")
        self.added.append(Mount(target, target))

    def _outside_message(self, value: str) -> str:
        where = f" in {self.mounts_file}" if self.mounts_file else ""
        if self.mounts:
            listed = ", ".join(f"{m.source} -> {m.destination}" for m in self.mounts)
            known = f"the mounts{where} are {listed}"
        else:
            known = "no mounts file is in force (~/.tao_mounts.json, $LAUNCHER_MOUNTS or --mounts)"
        return (f"path {value} is outside every mount, so the container cannot see it; {known}; "
                f"add a mount or pass --auto-mount")

    def working_dir(self) -> str | None:
        """The container path of the current directory, when it is mounted."""
        return to_container(os.path.normpath(self.cwd), self.mounts + self.added)
