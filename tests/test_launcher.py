"""The launcher through the real `taoctl` console script: dispatch, errors, jobs, signals, no torch."""

import os
import signal
import subprocess
import sys
import time

import pytest

from taoctl.launcher import registry
from taoctl.launcher.entrypoint import torchrun_command, world_size_requested

TAOCTL = [sys.executable, "-m", "taoctl.launcher.cli"]

ISSUE_TASKS = """augment bpnet classification classification_tf1 converter detectnet_v2 dssd efficientdet emotionnet
faster_rcnn fpenet gazenet gesturenet heartratenet lprnet mask_rcnn multitask_classification retinanet ssd unet yolo_v3
yolo_v4 yolo_v4_tiny action_recognition intent_slot_classification n_gram punctuation_and_capitalization
question_answering spectro_gen speech_to_text speech_to_text_citrinet text_classification token_classification
vocoder""".split()


def taoctl(*args, env=None, timeout=60):
    return subprocess.run([*TAOCTL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_registry_declares_every_tao_launcher_task():
    names = registry.task_names()
    assert set(ISSUE_TASKS) <= set(names)
    assert registry.get_task("classification_tf1") is registry.get_task("classification")
    groups = {t.name: t.group for t in registry.TASKS}
    assert groups["n_gram"] == "conversational" and groups["yolo_v3"] == "vision"


def test_help_lists_tasks_and_commands():
    result = taoctl("--help")
    assert result.returncode == 0
    for word in ("info", "list", "stop", "model", "dataset", "deploy", "detectnet_v2", "speech_to_text"):
        assert word in result.stdout


@pytest.mark.parametrize("args, message", [
    (["clasification", "train"], 'unknown task or command "clasification" (did you mean "classification"?)'),
    (["classification", "trian"], 'unknown subtask "trian" for task classification (did you mean "train"?)'),
    (["n_gram", "train"], "`n_gram train` is not implemented yet in taoctl"),
    (["model", "yolo_v5", "train"], 'unknown task or command "yolo_v5"'),
    (["classification", "run"], "needs a command to run"),
    (["--runtime", "dockr", "info"], "Invalid value for '--runtime'"),
])
def test_user_errors_are_one_line_with_exit_2(args, message):
    result = taoctl(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("taoctl:")]) == 1


def test_tao5_form_resolves_the_same_task():
    result = taoctl("model", "classification_tf1")
    assert result.returncode == 0 and "Subtasks:" in result.stdout and "train" in result.stdout


def test_info_verbose_shows_the_task_table():
    result = taoctl("info", "--verbose")
    assert result.returncode == 0
    assert "taoctl version" in result.stdout and "runtimes:" in result.stdout
    table = {line.split()[0]: line for line in result.stdout.splitlines() if line and line.split()[0] in ISSUE_TASKS}
    assert "conversational" in table["text_classification"] and "planned" in table["text_classification"]


@pytest.mark.parametrize("argv", [["--help"], ["info", "--verbose"], ["list"]])
def test_control_commands_do_not_import_torch(argv):
    code = ("import sys; from taoctl.launcher.cli import main; rc = main(%r); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)" % (argv,))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_run_passes_output_and_exit_status_through():
    result = taoctl("classification", "run", "sh", "-c", "echo hello from the task; exit 3")
    assert result.returncode == 3
    assert "hello from the task" in result.stdout


def test_list_shows_a_running_job_and_stop_ends_it(tmp_path):
    env = {**os.environ, "TAOCTL_HOME": str(tmp_path)}
    job = subprocess.Popen([*TAOCTL, "classification", "run", "sleep", "60"], env=env)
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


def test_sigterm_to_the_launcher_reaches_the_task(tmp_path):
    marker = tmp_path / "got_term"
    script = f"trap 'touch {marker}; exit 5' TERM; while true; do sleep 0.1; done"
    launcher = subprocess.Popen([*TAOCTL, "classification", "run", "sh", "-c", script],
                                env={**os.environ, "TAOCTL_HOME": str(tmp_path)})
    time.sleep(1.5)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 5
    assert marker.exists()


def test_world_size_and_torchrun_command():
    assert world_size_requested([]) == 1
    assert world_size_requested(["--gpus", "4"]) == 4
    assert world_size_requested(["-np", "2", "--gpus", "1"]) == 2
    single = torchrun_command("classification", "train", ["-np", "2"], 2)
    assert "--standalone" in single and single[-4:] == ["classification", "train", "-np", "2"]
    multi = torchrun_command("classification", "train", ["--num_nodes", "2", "--node_rank", "1", "--master_addr",
                                                         "10.0.0.1", "--master_port", "1234"], 2)
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=1234"} <= set(multi)
