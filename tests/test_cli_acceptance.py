"""Issue 2's acceptance lines through the real `taoctl` command on generated data:
bad inputs give one clear line and a non-zero exit; a train killed with SIGKILL mid-epoch
resumes when the same command is run again; data-parallel training with 2 CPU processes."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

SPEC = """\
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" use_batch_norm: true }}
train_config {{
  train_dataset_path: "{data}/classification/train"
  val_dataset_path: "{data}/classification/val"
  optimizer {{ sgd {{ lr: 0.05 momentum: 0.9 }} }}
  lr_config {{ cosine {{ learning_rate: 0.05 min_lr_ratio: 0.1 soft_start: 0.1 }} }}
  batch_size_per_gpu: 32
  n_epochs: {epochs}
  n_workers: 0
  random_seed: 1
}}
eval_config {{ eval_dataset_path: "{data}/classification/val" top_k: 1 batch_size: 32 }}
"""


@pytest.fixture(scope="module")
def taoctl(taoctl):
    """One OpenMP thread per process: the data-parallel test runs two processes on two cores."""
    return taoctl.configured(env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory, taoctl):
    out = tmp_path_factory.mktemp("samples")
    taoctl.run_module("taoctl.engine.data.samples", "--out", out, check=True)
    return out


def write_spec(folder, data, epochs=1, text=None):
    path = folder / "spec.txt"
    path.write_text(text if text is not None else SPEC.format(data=data, epochs=epochs))
    return path


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("taoctl:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_spec(tmp_path, taoctl):
    result = taoctl("classification", "train", "-e", tmp_path / "nope.txt", "-r", tmp_path / "r")
    assert_one_line_error(result, "nope.txt", "not found")


def test_spec_with_a_typo_names_line_column_and_suggestion(tmp_path, sample_data, taoctl):
    text = SPEC.format(data=sample_data, epochs=1).replace("n_layers", "n_layrs")
    spec = write_spec(tmp_path, sample_data, text=text)
    result = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r")
    assert_one_line_error(result, f"{spec}:1:31:", 'unknown field "n_layrs"', 'did you mean "n_layers"')
    assert result.returncode == 2


def test_results_dir_not_writable(tmp_path, sample_data, taoctl):
    spec = write_spec(tmp_path, sample_data)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = taoctl("classification", "train", "-e", spec, "-r", blocker / "results")
    assert_one_line_error(result, "not writable")


def test_wrong_key_and_unknown_task(tmp_path, sample_data, taoctl):
    spec = write_spec(tmp_path, sample_data, epochs=1)
    trained = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r", "-k", "right")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = tmp_path / "r" / "weights" / "resnet_001.tlt"
    for key_args in (["-k", "wrong"], []):
        result = taoctl("classification", "evaluate", "-e", spec, "-m", model, *key_args)
        assert_one_line_error(result, f"cannot decrypt {model}: wrong key")
    assert_one_line_error(taoctl("clasification", "train"), 'did you mean "classification"')


def test_sigkill_mid_epoch_then_the_same_command_resumes_and_finishes(tmp_path, sample_data, taoctl):
    spec = write_spec(tmp_path, sample_data, epochs=3)
    results = tmp_path / "r"
    command = ("classification", "train", "-e", spec, "-r", results)
    process = taoctl.start(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (results / "weights" / "resnet_001.tlt").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # epoch 1 is saved; epoch 2 is under way
    process.wait()
    assert not (results / "weights" / "resnet_003.tlt").exists()
    resumed = taoctl(*command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Epoch 1's checkpoint, or epoch 2's when the kill landed just after it was written.
    assert re.search(r"Resuming from epoch [12] checkpoint", resumed.stdout + resumed.stderr)
    assert (results / "weights" / "resnet_003.tlt").exists()
    statuses = [json.loads(line)["status"] for line in (results / "status.json").read_text().splitlines()]
    assert statuses[-1] == "SUCCESS"


def test_two_cpu_processes_data_parallel(tmp_path, sample_data, taoctl):
    spec = write_spec(tmp_path, sample_data, epochs=1)
    result = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r", "-np", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Launching 2 processes" in result.stdout
    assert (tmp_path / "r" / "weights" / "resnet_001.tlt").exists()
