"""The launcher through the real `taoctl` console script: dispatch, errors, jobs, signals, no torch."""

import os
import signal
import subprocess
import sys
import time

import pytest

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
    assert "conversational" in table["text_classification"] and "planned" in table["text_classification"]


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


def test_evaluate_with_two_gpus_runs_one_process_and_says_so(tmp_path, taoctl):
    from PIL import Image

    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "data" / name / f"{i}.png")
    spec = tmp_path / "spec.txt"
    spec.write_text(f"""
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" }}
train_config {{
  train_dataset_path: "{tmp_path}/data" val_dataset_path: "{tmp_path}/data"
  optimizer {{ sgd {{ lr: 0.01 }} }} lr_config {{ step {{ learning_rate: 0.01 step_size: 1 gamma: 1 }} }}
  batch_size_per_gpu: 8 n_epochs: 1 n_workers: 0
}}
eval_config {{ eval_dataset_path: "{tmp_path}/data" top_k: 1 batch_size: 8 }}
""")
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
