"""Mounts file parsing, path translation, GPU requests and image naming: no Docker needed."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from taoctl.errors import TaoctlError
from taoctl.launcher import images, mounts, registry
from taoctl.launcher.runtime import docker as docker_runtime

TAO_EXAMPLE = {
    "Envs": [{"variable": "CUDA_VISIBLE_DEVICES", "value": "0"}, {"variable": "N", "value": 3}],
    "DockerOptions": {"shm_size": "16G", "ulimits": {"memlock": -1, "stack": 67108864},
                      "user": "1001:1001", "ports": {"8888/tcp": 8888}, "network": "host",
                      "privileged": False, "tty": True},
}


def write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def project(tmp_path):
    (tmp_path / "project" / "specs").mkdir(parents=True)
    (tmp_path / "project" / "specs" / "train.txt").write_text("x")
    (tmp_path / "data").mkdir()
    return tmp_path


def test_tao_example_parses(project):
    data = dict(TAO_EXAMPLE, Mounts=[{"source": str(project / "project"), "destination": "/workspace/tao-experiments/"}])
    config = mounts.load(write(project / "m.json", data))
    assert config.mounts == [mounts.Mount(str(project / "project"), "/workspace/tao-experiments")]
    assert config.envs == {"CUDA_VISIBLE_DEVICES": "0", "N": "3"}
    assert config.docker_options["ulimits"] == {"memlock": -1, "stack": 67108864}
    assert config.docker_options["tty"] is True


@pytest.mark.parametrize("data, expected", [
    ("{not json", "not valid JSON"),
    ([], "top level must be a JSON object"),
    ({"Envs": []}, '"Mounts" is required'),
    ({"Mounts": [], "Extra": 1}, 'unknown key "Extra"; allowed: Mounts, Envs, DockerOptions'),
    ({"Mounts": [], "mounts": 1}, 'unknown key "mounts" (did you mean "Mounts"?)'),
    ({"Mounts": {}}, '"Mounts" must be a list'),
    ({"Mounts": [{"source": "/"}]}, 'Mounts[0]: "destination" is required'),
    ({"Mounts": [{"destination": "/x"}]}, 'Mounts[0]: "source" is required'),
    ({"Mounts": [{"source": "/", "destination": "/x", "mode": "ro"}]},
     'Mounts[0]: unknown key "mode"; allowed: source, destination'),
    ({"Mounts": [{"source": "/no/such/dir", "destination": "/x"}]},
     'Mounts[0]: source "/no/such/dir" does not exist'),
    ({"Mounts": [{"source": "/", "destination": "rel"}]}, "must be an absolute container path"),
    ({"Mounts": [{"source": "/", "destination": "/x"}, {"source": "/tmp", "destination": "/x/"}]},
     'Mounts[1]: destination "/x" is already used by Mounts[0]'),
    ({"Mounts": [], "Envs": [{"variable": "A"}]}, 'Envs[0]: "value" is required'),
    ({"Mounts": [], "Envs": [{"variable": "A=B", "value": "1"}]}, 'Envs[0]: "variable" is required'),
    ({"Mounts": [], "Envs": [{"name": "A", "value": "1"}]}, 'Envs[0]: unknown key "name"'),
    ({"Mounts": [], "DockerOptions": {"gpus": "all"}},
     'DockerOptions: unknown key "gpus"; allowed: user, ports, shm_size, ulimits, privileged, network, tty'),
    ({"Mounts": [], "DockerOptions": {"shm_size": "lots"}}, "DockerOptions.shm_size must be a size"),
    ({"Mounts": [], "DockerOptions": {"privileged": "yes"}}, "DockerOptions.privileged must be true or false"),
    ({"Mounts": [], "DockerOptions": {"ulimits": {"memlock": "-1"}}}, "DockerOptions.ulimits.memlock must be an integer"),
    ({"Mounts": [], "DockerOptions": {"ports": {"http": 80}}}, 'DockerOptions.ports: "http"'),
    ({"Mounts": [], "DockerOptions": {"user": 1000}}, "DockerOptions.user must be a non-empty string"),
])
def test_each_error_names_the_file_and_entry(tmp_path, data, expected):
    path = write(tmp_path / "bad_mounts.json", data)
    with pytest.raises(TaoctlError) as err:
        mounts.load(path)
    message = str(err.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_file_precedence(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(mounts.ENV_VAR, raising=False)
    assert mounts.find_file() is None
    default = write(home / ".tao_mounts.json", {"Mounts": []})
    assert mounts.find_file() == default
    from_env = write(tmp_path / "env.json", {"Mounts": []})
    monkeypatch.setenv(mounts.ENV_VAR, str(from_env))
    assert mounts.find_file() == from_env
    explicit = write(tmp_path / "explicit.json", {"Mounts": []})
    assert mounts.find_file(str(explicit)) == explicit
    with pytest.raises(TaoctlError, match=r"mounts file .*missing.json \(from --mounts\) does not exist"):
        mounts.find_file(str(tmp_path / "missing.json"))
    monkeypatch.setenv(mounts.ENV_VAR, str(tmp_path / "gone.json"))
    with pytest.raises(TaoctlError, match=r"\(from \$LAUNCHER_MOUNTS\)"):
        mounts.find_file()


def translator(project, auto=False, cwd=None):
    maps = [mounts.Mount(str(project / "project"), "/workspace/exp"),
            mounts.Mount(str(project / "project" / "specs"), "/specs"),
            mounts.Mount(str(project / "data"), "/data")]
    return mounts.Translator(maps, project / "m.json", auto_mount=auto, cwd=str(cwd or project / "project"))


def test_host_paths_become_container_paths(project):
    t = translator(project)
    p = str(project / "project")
    args = ["-e", f"{p}/specs/train.txt", "-r", f"{p}/out dir/run 1", "-k", "nvidia_tlt",
            f"--log_file={p}/log.txt", "-i", f"{project}/data/a", f"{project}/data/b", "--gpu_index", "0", "1"]
    assert t.translate_args(args) == [
        "-e", "/specs/train.txt", "-r", "/workspace/exp/out dir/run 1", "-k", "nvidia_tlt",
        "--log_file=/workspace/exp/log.txt", "-i", "/data/a", "/data/b", "--gpu_index", "0", "1"]


def test_relative_paths_resolve_against_the_host_cwd(project):
    t = translator(project, cwd=project / "project")
    # -e names an existing file, -r an output; "-m 10" (calibration's max_batches) is no path.
    assert t.translate_args(["-e", "specs/train.txt", "-r", "results", "-m", "10"]) == [
        "-e", "/specs/train.txt", "-r", "/workspace/exp/results", "-m", "10"]
    assert t.working_dir() == "/workspace/exp"


def test_hydra_overrides_are_translated(project):
    t = translator(project)
    assert t.translate_args(["-e", "/specs/train.txt", f"results_dir={project}/project/out",
                             f"dataset.train_data_sources={project}/data/train", "train.num_epochs=3"]) == [
        "-e", "/specs/train.txt", "results_dir=/workspace/exp/out", "dataset.train_data_sources=/data/train",
        "train.num_epochs=3"]
    with pytest.raises(TaoctlError, match="path /elsewhere/x is outside every mount"):
        t.translate_args(["results_dir=/elsewhere/x"])


def test_container_paths_pass_unchanged(project):
    t = translator(project)
    assert t.translate_args(["-e", "/workspace/exp/specs/train.txt", "-r", "/data/out"]) == [
        "-e", "/workspace/exp/specs/train.txt", "-r", "/data/out"]


def test_path_outside_every_mount_is_an_error_naming_it_and_the_mounts(project):
    outside = project / "elsewhere" / "spec.txt"
    with pytest.raises(TaoctlError) as err:
        translator(project).translate_args(["-e", str(outside)])
    message = str(err.value)
    assert str(outside) in message and "outside every mount" in message
    assert f"{project}/data -> /data" in message and "m.json" in message and "--auto-mount" in message


def test_auto_mount_mounts_at_the_same_path(project):
    (project / "elsewhere").mkdir()
    spec = project / "elsewhere" / "spec.txt"
    spec.write_text("x")
    t = translator(project, auto=True)
    new_results = project / "elsewhere" / "new" / "results"
    assert t.translate_args(["-e", str(spec), "-r", str(new_results)]) == ["-e", str(spec), "-r", str(new_results)]
    # Both live under the one existing directory, mounted once.
    assert t.added == [mounts.Mount(str(project / "elsewhere"), str(project / "elsewhere"))]


def test_run_commands_only_rewrite_mounted_host_paths(project):
    t = translator(project)
    assert t.translate_args(["ls", "-l", "/usr/lib", f"{project}/data/x"], strict=False) == [
        "ls", "-l", "/usr/lib", "/data/x"]


def test_gpu_requests():
    assert docker_runtime.gpu_devices(["--gpus", "2"], available=0) == (None, ["--gpus", "2"])
    assert docker_runtime.gpu_devices(["-e", "s"], available=4) == (["0"], ["-e", "s"])
    assert docker_runtime.gpu_devices(["--gpus", "2"], available=4) == (["0", "1"], ["--gpus", "2"])
    ids, args = docker_runtime.gpu_devices(["--gpus", "2", "--gpu_index", "1", "3", "-e", "s"], available=4)
    assert ids == ["1", "3"] and args == ["--gpus", "2", "--gpu_index", "0", "1", "-e", "s"]
    with pytest.raises(TaoctlError, match=r"asked for GPU\(s\) \[5\] but this host has 4"):
        docker_runtime.gpu_devices(["--gpu_index", "5"], available=4)


def test_launcher_flags_are_taken_out():
    options, rest = docker_runtime.take_flags(["-e", "s", "--mounts=m.json", "--image", "x.png", "--auto-mount", "-r", "o"])
    assert options == {"mounts": "m.json", "auto_mount": True}
    # --image after the task is the subtask's (classification inference -i/--image).
    assert rest == ["-e", "s", "--image", "x.png", "-r", "o"]


def test_image_map_from_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TAOCTL_HOME", str(tmp_path))
    yolo, ssd = registry.get_task("yolo_v4"), registry.get_task("ssd")
    assert images.image_for(ssd) == images.default_image("vision")
    write(tmp_path / "config.json", {"images": {"vision": "me/vision:1", "yolo_v4": "me/yolo:dev"}})
    assert images.image_for(ssd) == "me/vision:1"
    assert images.image_for(yolo) == "me/yolo:dev"
    assert images.image_for(yolo, override="cli:2") == "cli:2"
    write(tmp_path / "config.json", {"images": {"vision": 3}})
    with pytest.raises(TaoctlError, match="config.json"):
        images.image_for(ssd)


def test_build_context_is_the_source_only_and_reproducible(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"PK")
    blobs = []
    for _ in range(2):
        out = io.BytesIO()
        images.write_context(out, images.SOURCE_ROOT, "vision", wheels)
        blobs.append(out.getvalue())
    assert hashlib.sha256(blobs[0]).digest() == hashlib.sha256(blobs[1]).digest()
    names = tarfile.open(fileobj=io.BytesIO(blobs[0])).getnames()
    assert {"Dockerfile", "requirements.txt", "pyproject.toml", "constraints.txt",
            "src/taoctl/launcher/cli.py", "wheels/demo-1.0-py3-none-any.whl"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests", ".venv"))]
    reqs = tarfile.open(fileobj=io.BytesIO(blobs[0])).extractfile("requirements.txt").read().decode()
    assert "torch==2.13.0" in reqs and "pytest" not in reqs


def test_unreachable_daemon_is_one_line(tmp_path, taoctl):
    sock = tmp_path / "no.sock"
    result = taoctl("--runtime", "docker", "classification", "run", "true", env={"DOCKER_HOST": f"unix://{sock}"})
    assert result.returncode == 2
    assert result.stderr.strip() == (f"taoctl: Docker daemon not reachable at unix://{sock}; "
                                     f"use `--runtime local` or start Docker")
    info = taoctl("info", env={"DOCKER_HOST": f"unix://{sock}"})
    assert f"docker (not reachable at unix://{sock})" in info.stdout


def test_docker_flags_with_local_runtime_are_an_error(taoctl):
    result = taoctl("--runtime", "local", "classification", "run", "true", "--mounts", "x.json")
    assert result.returncode == 2
    assert "apply to the docker runtime" in result.stderr


def test_container_spec_without_docker(project, monkeypatch):
    config = mounts.parse(dict(TAO_EXAMPLE, Mounts=[{"source": str(project / "project"), "destination": "/exp"}]),
                          str(project / "m.json"))
    task = registry.get_task("classification")
    monkeypatch.chdir(project / "project")
    kwargs, notices = docker_runtime.container_spec(
        task, "train", ["-e", "specs/train.txt", "-r", "out", "--gpus", "2", "--gpu_index", "1", "3"], config,
        gpu_count=4)
    assert kwargs["command"] == ["python", "-m", "taoctl.launcher.entrypoint", "classification", "train",
                                 "-e", "/exp/specs/train.txt", "-r", "/exp/out", "--gpus", "2", "--gpu_index", "0", "1"]
    assert kwargs["device_requests"][0]["DeviceIDs"] == ["1", "3"]
    assert kwargs["user"] == "1001:1001" and kwargs["network_mode"] == "host" and kwargs["shm_size"] == "16G"
    assert kwargs["environment"] == {"HOME": "/tmp", "CUDA_VISIBLE_DEVICES": "0", "N": "3"}
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in kwargs["ulimits"]] == [("memlock", -1, -1),
                                                                               ("stack", 67108864, 67108864)]
    assert kwargs["mounts"] == [{"Target": "/exp", "Source": str(project / "project"), "Type": "bind",
                                 "ReadOnly": False}]
    assert kwargs["working_dir"] == "/exp" and kwargs["tty"] is True
    assert kwargs["labels"]["taoctl.results_dir"] == str(project / "project" / "out")
    assert kwargs["labels"]["taoctl.uid"] == str(os.getuid()) and notices == []

    # No user in DockerOptions: the host user's uid:gid. No GPU on the host: a notice, no request.
    plain = mounts.parse({"Mounts": [{"source": str(project), "destination": "/p"}]}, "m.json")
    kwargs, notices = docker_runtime.container_spec(task, "train", ["-e", "/p/x", "--gpus", "2"], plain)
    assert kwargs["user"] == f"{os.getuid()}:{os.getgid()}" and "device_requests" not in kwargs
    assert kwargs["command"][-2:] == ["--gpus", "2"]
    assert notices == ["no GPU on this host; the task runs on CPU"]
    # `run <cmd>` gets every GPU of a GPU host and its arguments untouched.
    kwargs, notices = docker_runtime.container_spec(task, "run", ["nvidia-smi", "--gpus", "1"], plain, gpu_count=2)
    assert kwargs["device_requests"][0]["Count"] == -1 and kwargs["command"] == ["nvidia-smi", "--gpus", "1"]


def test_launcher_commands_do_not_import_the_docker_sdk():
    # With no daemon, info and list answer from a socket ping alone.
    code = ("import sys; from click.testing import CliRunner; from taoctl.launcher import cli; "
            "codes = [CliRunner().invoke(cli.cli, c).exit_code for c in (['info'], ['list'])]; "
            "print(*codes, 'docker' in sys.modules, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.stdout.split() == ["0", "0", "False", "False"], result.stderr
