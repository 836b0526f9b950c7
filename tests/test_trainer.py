"""The training engine, through real subprocesses: resume after SIGKILL, DDP on 2 CPU processes,
status.json, metrics, results-dir checks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from taoctl.engine.resultsdir import prepare_results_dir
from taoctl.errors import TaoctlError

WORKER = str(Path(__file__).with_name("trainer_worker.py"))


def run_worker(results_dir, epochs, *extra, check=True):
    return subprocess.run([sys.executable, WORKER, str(results_dir), str(epochs), *extra],
                          capture_output=True, text=True, check=check, timeout=300)


def weights_equal(a, b):
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_status_and_metrics(tmp_path):
    run_worker(tmp_path, 3)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["tiny_001.tlt", "tiny_002.tlt", "tiny_003.tlt"]
    lines = [json.loads(line) for line in (tmp_path / "status.json").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["STARTED", "RUNNING", "RUNNING", "RUNNING", "SUCCESS"]
    running = lines[1]
    for field in ("date", "time", "epoch", "max_epoch", "time_per_epoch", "eta", "loss", "metrics"):
        assert field in running
    assert running["max_epoch"] == 3 and "val_accuracy" in running["metrics"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 4
    assert list((tmp_path / "events").glob("events.out.tfevents.*"))
    assert lines[-2]["metrics"]["val_accuracy"] > 0.9  # the toy problem is learnable


def test_sigkill_mid_epoch_then_same_command_resumes_and_matches_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_worker(straight, 4)
    command = [sys.executable, WORKER, str(killed), "4", "--slow", "0.02"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill once epoch 2's checkpoint is written and epoch 3 is under way.
    while not (killed / "weights" / "tiny_002.tlt").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "weights" / "tiny_004.tlt").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from epoch" in resumed.stdout
    assert weights_equal(straight / "rank0.safetensors", killed / "rank0.safetensors")


def test_ddp_two_cpu_processes_with_ema_and_clipping_end_with_equal_weights(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER,
               str(tmp_path), "2", "--ema", "0.9", "--clip", "0.5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert weights_equal(tmp_path / "rank0.safetensors", tmp_path / "rank1.safetensors")
    # Only rank 0 writes checkpoints and status.
    assert len((tmp_path / "status.json").read_text().splitlines()) == 4


def test_results_dir_of_another_spec_is_refused_unless_forced(tmp_path):
    prepare_results_dir(tmp_path, "spec one")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "old_001.tlt").write_bytes(b"x")
    prepare_results_dir(tmp_path, "spec one")  # same spec: fine, resumable
    with pytest.raises(TaoctlError, match="different spec"):
        prepare_results_dir(tmp_path, "spec two")
    prepare_results_dir(tmp_path, "spec two", force=True)
    assert not (tmp_path / "weights").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_dir_is_one_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(TaoctlError, match="not writable"):
        prepare_results_dir(locked / "run", "spec")


def test_results_dir_under_a_file_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TaoctlError, match="not writable"):
        prepare_results_dir(blocker / "run", "spec")
