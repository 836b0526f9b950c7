"""The launcher through the real `taoctl` console script: dispatch, errors, jobs, signals, no torch."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import make_colour_images

from taoctl.launcher import registry
from taoctl.launcher.entrypoint import processes_requested, torchrun_command

ISSUE_TASKS = """augment bpnet classification classification_tf1 converter detectnet_v2 dssd efficientdet emotionnet
faster_rcnn fpenet gazenet gesturenet heartratenet lprnet mask_rcnn multitask_classification retinanet ssd unet yolo_v3
yolo_v4 yolo_v4_tiny action_recognition intent_slot_classification n_gram punctuation_and_capitalization
question_answering spectro_gen speech_to_text speech_to_text_citrinet text_classification token_classification
vocoder""".split()


def test_registry_declares_every_tao_launcher_task():
    names = registry.task_names()
    assert set(ISSUE_TASKS) <= set(names)
    assert registry.get_task("classification_tf1") is registry.get_task("classification")
    groups = {t.name: t.group for t in registry.TASKS}
    assert groups["n_gram"] == "conversational" and groups["yolo_v3"] == "vision"


def test_help_lists_tasks_and_commands(taoctl):
    result = taoctl("--help")
    assert result.returncode == 0
    for word in ("info", "list", "stop", "model", "dataset", "deploy", "detectnet_v2", "speech_to_text"):
        assert word in result.stdout


@pytest.mark.parametrize("args, message", [
    (["clasification", "train"], 'unknown task or command "clasification" (did you mean "classification"?)'),
    (["classification", "trian"], 'unknown subtask "trian" for task classification (did you mean "train"?)'),
    (["n_gram", "train"], "`n_gram train` is not implemented yet in taoctl"),
    (["converter", "m.etlt", "-k", "KEY"], "taoctl: `converter` is not implemented yet in taoctl"),
    (["model", "yolo_v5", "train"], 'unknown task or command "yolo_v5"'),
    (["classification", "run"], "needs a command to run"),
    (["--runtime", "dockr", "info"], "Invalid value for '--runtime'"),
])
def test_user_errors_are_one_line_with_exit_2(args, message, taoctl):
    result = taoctl(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("taoctl:")]) == 1


def test_tao5_form_resolves_the_same_task(taoctl):
    result = taoctl("model", "classification_tf1")
    assert result.returncode == 0 and "Subtasks:" in result.stdout and "train" in result.stdout


def test_info_verbose_shows_the_task_table(taoctl):
    result = taoctl("info", "--verbose")
    assert result.returncode == 0
    assert "taoctl version" in result.stdout and "runtimes:" in result.stdout
    table = {line.split()[0]: line for line in result.stdout.splitlines() if line and line.split()[0] in ISSUE_TASKS}
    assert "conversational" in table["text_classification"] and "partial" in table["text_classification"]
    assert "conversational" in table["speech_to_text"] and "planned" in table["speech_to_text"]


@pytest.mark.parametrize("argv", [["--help"], ["info", "--verbose"], ["list"]])
def test_control_commands_do_not_import_torch(argv):
    code = ("import sys; from taoctl.launcher.cli import main; rc = main(%r); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)" % (argv,))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_run_passes_output_and_exit_status_through(taoctl):
    result = taoctl("classification", "run", "sh", "-c", "echo hello from the task; exit 3")
    assert result.returncode == 3
    assert "hello from the task" in result.stdout


def test_list_shows_a_running_job_and_stop_ends_it(tmp_path, taoctl):
    env = {"TAOCTL_HOME": str(tmp_path)}
    job = taoctl.start("classification", "run", "sleep", "60", env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            listing = taoctl("list", env=env)
            if "classification" in listing.stdout:
                break
            assert time.monotonic() < deadline, listing
            time.sleep(0.2)
        job_id = listing.stdout.splitlines()[1].split()[0]
        stopped = taoctl("stop", "--container_id", job_id, env=env)
        assert stopped.returncode == 0 and f"stopped {job_id}" in stopped.stdout
        assert job.wait(timeout=30) == 128 + signal.SIGTERM
        assert "classification" not in taoctl("list", env=env).stdout
    finally:
        job.kill()
    assert taoctl("stop", "--container_id", "local-1", env=env).returncode == 2


def test_sigterm_to_the_launcher_reaches_the_task(tmp_path, taoctl):
    marker = tmp_path / "got_term"
    script = f"trap 'touch {marker}; exit 5' TERM; while true; do sleep 0.1; done"
    launcher = taoctl.start("classification", "run", "sh", "-c", script, env={"TAOCTL_HOME": str(tmp_path)})
    time.sleep(1.5)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 5
    assert marker.exists()


def test_world_size_and_torchrun_command():
    assert processes_requested([]) == ("--gpus", 1)
    assert processes_requested(["--gpus", "4"]) == ("--gpus", 4)
    assert processes_requested(["-np", "2", "--gpus", "1"]) == ("-np", 2)
    assert processes_requested(["--gpus", "two"]) == ("--gpus", 1)
    single = torchrun_command("classification", "train", ["-np", "2"], 2)
    assert "--standalone" in single and single[-4:] == ["classification", "train", "-np", "2"]
    multi = torchrun_command("classification", "train", ["--num_nodes", "2", "--node_rank", "1", "--master_addr",
                                                         "10.0.0.1", "--master_port", "1234"], 2)
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=1234"} <= set(multi)



@pytest.mark.parametrize("user_value, seen", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_subtask_process_gets_passive_omp_wait_unless_the_user_set_it(user_value, seen, taoctl):
    result = taoctl("classification", "run", "sh", "-c", 'echo "policy=$OMP_WAIT_POLICY"',
                    env={"OMP_WAIT_POLICY": user_value})
    assert result.returncode == 0, result.stderr
    assert f"policy={seen}\n" in result.stdout


def test_entrypoint_sets_passive_omp_wait_before_the_subtask_loads():
    # The docker runtime starts the entrypoint directly, with no launcher before it.
    code = ("import os, sys; from taoctl.launcher.entrypoint import main; "
            "rc = main(['classification', 'evaluate', '--help']); "
            "print('policy=' + os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "policy=PASSIVE False"


def tiny_classification(root, epochs: int, lr: float = 0.01):
    """A two-class set of 4 images per class under ``root/data`` and a resnet10 spec training on it."""
    make_colour_images(root, {"data": 4})
    spec = root / "spec.txt"
    spec.write_text(f"""
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" }}
train_config {{
  train_dataset_path: "{root}/data" val_dataset_path: "{root}/data"
  optimizer {{ sgd {{ lr: {lr} }} }} lr_config {{ step {{ learning_rate: {lr} step_size: 1 gamma: 1 }} }}
  batch_size_per_gpu: 8 n_epochs: {epochs} n_workers: 0
}}
eval_config {{ eval_dataset_path: "{root}/data" top_k: 1 batch_size: 8 }}
""")
    return spec


def test_evaluate_with_two_gpus_runs_one_process_and_says_so(tmp_path, taoctl):
    spec = tiny_classification(tmp_path, epochs=1)
    cls = taoctl.configured(env={"OMP_NUM_THREADS": "1"})
    cls("classification", "train", "-e", spec, "-r", tmp_path / "train", timeout=300, check=True)
    model = tmp_path / "train" / "weights" / "resnet_001.tlt"

    result = cls("classification", "evaluate", "-e", spec, "-m", model, "-r", tmp_path / "eval", "--gpus", "2",
                 timeout=300, check=True)
    notices = [line for line in result.stderr.splitlines() if line.startswith("taoctl:")]
    assert notices == ["taoctl: evaluate runs as one process; --gpus 2 uses one device "
                       "(subtasks that run as several: train)"]
    assert "Launching" not in result.stdout
    assert len([line for line in result.stdout.splitlines() if " images in " in line]) == 1, result.stdout
    assert (tmp_path / "eval" / "results.json").is_file()

    planned = cls("classification", "evaluate", "-e", spec, "-m", model, "-np", "2", "--dry-run", check=True)
    assert "taoctl: evaluate runs as one process; -np 2 uses one device" in planned.stderr


def _wait_for_jobs(count: int, timeout: float = 60.0) -> list[dict]:
    """The running job records once there are ``count`` (TAOCTL_HOME set by the test)."""
    from taoctl.launcher import jobs

    deadline = time.monotonic() + timeout
    while len(running := jobs.running_jobs()) < count:
        assert time.monotonic() < deadline, f"{len(running)} job(s) running, waited for {count}"
        time.sleep(0.1)
    return running


def test_stop_takes_several_ids_and_list_tells_jobs_apart(tmp_path, taoctl, monkeypatch):
    monkeypatch.setenv("TAOCTL_HOME", str(tmp_path))
    env = {"TAOCTL_HOME": str(tmp_path)}
    started = [taoctl.start("classification", "run", "sleep", seconds, env=env) for seconds in ("60", "61")]
    try:
        running = _wait_for_jobs(2)
        rows = taoctl("list", env=env, check=True).stdout.splitlines()
        assert rows[0].split() == ["id", "task", "subtask", "status", "started", "results_dir", "command"]
        assert sorted(row.split(None, 7)[7] for row in rows[1:]) == ["taoctl classification run sleep 60",
                                                                    "taoctl classification run sleep 61"]
        ids = [job["id"] for job in running]
        stopped = taoctl("stop", "--container_id", *ids, env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.splitlines() == [f"stopped {job_id}" for job_id in ids]
        assert [job.wait(timeout=30) for job in started] == [128 + signal.SIGTERM] * 2
        assert taoctl("list", env=env, check=True).stdout.splitlines()[1:] == []
    finally:
        for job in started:
            job.kill()


def test_stop_never_signals_a_process_that_took_a_finished_jobs_pid(tmp_path, taoctl, monkeypatch):
    import json

    from taoctl.launcher import jobs

    monkeypatch.setenv("TAOCTL_HOME", str(tmp_path))
    env = {"TAOCTL_HOME": str(tmp_path)}
    # Someone else's process, leading its own process group as a job's process does.
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = jobs.record_job(stranger.pid, "classification", "train", ["-r", str(tmp_path / "out")])
        own = record.read_text()
        # As if the recorded job had ended and the kernel had given its pid to the stranger.
        reused = json.loads(own)
        reused["start_time"] -= 1
        record.write_text(json.dumps(reused))
        assert taoctl("list", env=env, check=True).stdout.splitlines()[1:] == []
        stopped = taoctl("stop", "--all", env=env)
        assert stopped.returncode == 0 and stopped.stdout == "", stopped.stderr
        assert stranger.poll() is None, "a stranger was signalled"
        assert not record.exists(), "the stale record was kept"
        # The same record with the process's own start time is a job: listed, and stopped.
        record.write_text(own)
        row = taoctl("list", env=env, check=True).stdout.splitlines()[1].split()
        assert row[:4] == [f"local-{stranger.pid}", "classification", "train", "running"]
        assert row[6:] == [str(tmp_path / "out"), "taoctl", "classification", "train", "-r", str(tmp_path / "out")]
        assert taoctl("stop", "--container_id", f"local-{stranger.pid}", env=env).returncode == 0
        assert stranger.wait(timeout=30) == -signal.SIGTERM
    finally:
        stranger.kill()
        stranger.wait()


def test_list_and_stop_skip_and_remove_records_they_cannot_read(tmp_path, taoctl, monkeypatch):
    import json

    from taoctl.launcher import jobs

    monkeypatch.setenv("TAOCTL_HOME", str(tmp_path))
    env = {"TAOCTL_HOME": str(tmp_path)}
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "local-1.json").write_text('{"id": "local-1", "pid": ')
    (folder / "local-2.json").write_text(json.dumps({"id": "local-2", "task": "classification"}))
    (folder / "local-3.json").write_text(json.dumps({"id": "local-3", "pid": "12", "start_time": 5}))
    (folder / "local-4.json").write_text("[]")
    # A running process's record, from another host sharing this home: not ours to judge.
    elsewhere = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = jobs.record_job(elsewhere.pid, "classification", "train", [])
        record.write_text(json.dumps({**json.loads(record.read_text()), "host": "elsewhere"}))
        listing = taoctl("list", env=env)
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.splitlines()[1:] == [] and listing.stderr == ""
        assert [p.name for p in folder.iterdir()] == [record.name]
        stopped = taoctl("stop", "--all", env=env)
        assert stopped.returncode == 0 and stopped.stdout == "" and elsewhere.poll() is None
    finally:
        elsewhere.kill()
        elsewhere.wait()


def test_a_train_run_stopped_by_taoctl_stop_ends_its_status_with_failure(tmp_path, taoctl, monkeypatch):
    import json

    monkeypatch.setenv("TAOCTL_HOME", str(tmp_path))
    # A learning rate that cannot diverge however many epochs a loaded machine runs before the stop
    # (0.01 turns the loss nan at about epoch 4).
    spec = tiny_classification(tmp_path, epochs=10000, lr=1e-5)
    results = tmp_path / "train"
    env = {"TAOCTL_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    job = taoctl.start("classification", "train", "-e", spec, "-r", results, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = results / "status.json"
        deadline = time.monotonic() + 300
        while not (status.is_file() and status.read_text().endswith("\n")):  # the first line is whole
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "no status line"
            time.sleep(0.1)
        (running,) = _wait_for_jobs(1)
        assert running["results_dir"] == str(results)
        assert running["command"] == f"taoctl classification train -e {spec} -r {results}"
        assert taoctl("stop", "--container_id", running["id"], env=env).returncode == 0
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 143, err  # SIGTERM, as a shell reports it
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("taoctl:")] == ["taoctl: train interrupted"]
    last = json.loads(status.read_text().splitlines()[-1])
    assert (last["status"], last["message"]) == ("FAILURE", "Training interrupted.")
    assert not list(results.rglob(".*.tmp*")), "temporary files left behind"
