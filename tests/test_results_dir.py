"""One run per results dir, through the real `taoctl`: an OS lock held while a run trains (and freed
by the kernel when it dies), claimed only by a run that wrote a checkpoint, and one writer (global
rank 0) when the nodes of a multi-node run share the dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_colour_images

from taoctl.engine.resultsdir import LOCK_FILE, locked_results_dir
from taoctl.launcher.entrypoint import DDP_CHILD_ENV, torchrun_command

SPEC = """
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" use_batch_norm: true }}
train_config {{
  train_dataset_path: "{train}"
  val_dataset_path: "{val}"
  optimizer {{ adam {{ lr: {lr} }} }}
  lr_config {{ step {{ learning_rate: {lr} step_size: 50 gamma: 0.5 }} }}
  batch_size_per_gpu: 8
  n_epochs: {epochs}
  n_workers: 0
}}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_images(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


def write_spec(path: Path, data: Path, epochs: int, lr: float = 0.003, train: Path | None = None) -> Path:
    path.write_text(SPEC.format(train=train or data / "train", val=data / "val", epochs=epochs, lr=lr))
    return path


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``condition()`` holds, while ``process`` still runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended ({process.returncode}) first"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def status_lines(results: Path) -> list[dict]:
    path = results / "status.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_second_run_into_a_busy_dir_is_refused_naming_the_holder_and_a_killed_holder_frees_it(
        tmp_path, data, taoctl):
    results = tmp_path / "run"
    command = ("classification", "train", "-e", write_spec(tmp_path / "spec.txt", data, epochs=1000), "-r", results)
    first = taoctl.start(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: status_lines(results), first)  # the trainer has started: it holds the lock
        holder = json.loads((results / LOCK_FILE).read_text())
        assert "classification train" in holder["command"] and str(results) in holder["command"]

        second = taoctl(*command, timeout=300)
        assert second.returncode == 2
        error = second.stderr.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(f"taoctl: results dir {results} is in use by "
                                                       f"pid {holder['pid']} ({holder['command']})")
        assert json.loads((results / LOCK_FILE).read_text()) == holder
        assert [line["status"] for line in status_lines(results)].count("STARTED") == 1  # one run trains

        os.kill(holder["pid"], signal.SIGKILL)  # a crash
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    with locked_results_dir(results):  # free at once: no stale lock
        pass


def test_only_a_run_that_wrote_a_checkpoint_claims_its_dir(tmp_path, data, taoctl):
    results = tmp_path / "run"
    missing = write_spec(tmp_path / "missing.txt", data, epochs=1, train=tmp_path / "nowhere")
    failed = taoctl("classification", "train", "-e", missing, "-r", results)
    assert failed.returncode == 2 and "nowhere" in failed.stderr
    assert not (results / "weights").exists()

    corrected = write_spec(tmp_path / "spec.txt", data, epochs=1)
    taoctl("classification", "train", "-e", corrected, "-r", results, check=True)  # no --force needed
    checkpoint = results / "weights" / "resnet_001.tlt"
    saved = checkpoint.read_bytes()

    other = write_spec(tmp_path / "other.txt", data, epochs=1, lr=0.002)
    refused = taoctl("classification", "train", "-e", other, "-r", results)
    assert refused.returncode == 2
    error = refused.stderr.strip().splitlines()
    assert len(error) == 1 and "holds checkpoints of a different spec" in error[0] and str(results) in error[0]
    assert checkpoint.read_bytes() == saved


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_sharing_a_results_dir_are_one_run_written_by_global_rank_zero(tmp_path, data, taoctl):
    results = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.txt", data, epochs=2)
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", DDP_CHILD_ENV: "1"}
    nodes = []
    for node in (0, 1):
        args = ["-e", str(spec), "-r", str(results), "--log_file", str(results / "train.log"), "--num_nodes", "2",
                "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port)]
        # What the entrypoint starts on each node: one torchrun agent, here one process per node.
        command = [sys.executable, *torchrun_command("classification", "train", args, 1)[1:]]
        nodes.append(subprocess.Popen(command, env=env, cwd=taoctl.cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    assert "--node_rank 0" in json.loads((results / LOCK_FILE).read_text())["command"]
    assert sorted(path.name for path in results.iterdir()) == sorted(
        [LOCK_FILE, ".taoctl_run.json", "classmap.json", "events", "metrics.csv", "status.json", "train.log",
         "train_state", "training.csv", "weights"])
    assert [line["status"] for line in status_lines(results)] == ["STARTED", "RUNNING", "RUNNING", "SUCCESS"]
    assert len(list((results / "events").glob("events.out.tfevents.*"))) == 1
    assert len((results / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(path.name for path in (results / "weights").iterdir()) == ["resnet_001.tlt", "resnet_002.tlt"]
    log = (results / "train.log").read_text()
    assert sum(line.startswith("Epoch 2/2:") for line in log.splitlines()) == 1
