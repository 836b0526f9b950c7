"""Failures and interrupts end in one line and leave a true status.json (issue 16, second round).

Through the real `taoctl` command on a tiny classifier: a train that fails at startup writes its
FAILURE line and leaves nothing else in a new results dir; Ctrl-C / SIGTERM during export and
`taoctl stop` of a train with DataLoader workers are one "interrupted" line with exit 130 / 143;
a full disk during export names the file; a killed DDP worker and a stopped DDP run are one line;
--log_file naming a file the spec names is refused before the log is opened. Each case failed
before the change it tests.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import make_colour_images
from torch import nn

from taoctl.engine import export
from taoctl.fileio import OutOfSpaceError
from taoctl.launcher import torchrun

SPEC = """
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" }}
train_config {{
  train_dataset_path: "{train}"
  val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ lr: 0.0001 momentum: 0.9 }} }}
  lr_config {{ step {{ learning_rate: 0.0001 step_size: 10 gamma: 0.5 }} }}
  batch_size_per_gpu: 4
  n_epochs: {epochs}
  n_workers: {workers}
}}
eval_config {{ eval_dataset_path: "{data}/val" batch_size: 4 {eval_model} }}
"""
QUIET = {"OMP_NUM_THREADS": "1"}


def write_spec(path: Path, data: Path, epochs=1, workers=0, train=None, eval_model="") -> Path:
    path.write_text(SPEC.format(data=data, train=train or data / "train", epochs=epochs, workers=workers,
                                eval_model=f'model_path: "{eval_model}"' if eval_model else ""))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("wave2")
    data = make_colour_images(root / "data", {"train": 4, "val": 2})
    spec = write_spec(root / "spec.txt", data)
    taoctl("classification", "train", "-e", spec, "-r", root / "run", env=QUIET, timeout=300, check=True)
    return {"root": root, "data": data, "spec": spec, "model": root / "run" / "weights" / "resnet_001.tlt"}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("taoctl:")]


def status_lines(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "status.json").read_text().splitlines()]


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def training(results: Path):
    """A condition: the train into ``results`` finished an epoch (its status.json has a RUNNING line)."""
    status = results / "status.json"
    return lambda: status.is_file() and '"RUNNING"' in status.read_text()


# --------------------------------------------------------------------------- 1. failures at startup
def test_a_train_failing_at_startup_leaves_only_its_failure_line(trained, taoctl, tmp_path):
    spec = write_spec(tmp_path / "s.txt", trained["data"], train=trained["spec"])  # a file, not a folder
    results = tmp_path / "new" / "run"
    result = taoctl("classification", "train", "-e", spec, "-r", results, env=QUIET, timeout=300)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [f"taoctl: train_config.train_dataset_path path {trained['spec']}: not a "
                                          f"folder (expected <root>/<class>/<images>)"]
    assert sorted(p.name for p in results.iterdir()) == ["status.json"]
    (line,) = status_lines(results)
    assert line["status"] == "FAILURE" and line["message"].startswith("Training failed: train_config.train_dataset")

    # The corrected spec then trains there (nothing claims the dir) and the status goes on.
    fixed = write_spec(tmp_path / "s.txt", trained["data"])
    taoctl("classification", "train", "-e", fixed, "-r", results, env=QUIET, timeout=300, check=True)
    assert [line["status"] for line in status_lines(results)][-1] == "SUCCESS"


def test_a_failed_evaluate_leaves_only_status_json_in_a_new_results_dir(trained, taoctl, tmp_path):
    damaged = tmp_path / "damaged.tlt"
    damaged.write_bytes(trained["model"].read_bytes()[:1000])
    results = tmp_path / "eval"
    result = taoctl("classification", "evaluate", "-e", trained["spec"], "-m", damaged, "-r", results, env=QUIET)
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1, result.stderr
    assert sorted(p.name for p in results.iterdir()) == ["status.json"]
    assert [line["status"] for line in status_lines(results)] == ["STARTED", "FAILURE"]


def test_a_train_refused_a_dir_writes_nothing_there(trained, taoctl, tmp_path):
    """Another spec's checkpoints, or another run's lock: the dir's status.json stays that run's."""
    other = write_spec(tmp_path / "other.txt", trained["data"], epochs=2)
    before = (trained["root"] / "run" / "status.json").read_bytes()
    result = taoctl("classification", "train", "-e", other, "-r", trained["root"] / "run", env=QUIET, timeout=300)
    assert result.returncode == 2 and "holds checkpoints of a different spec" in result.stderr
    assert (trained["root"] / "run" / "status.json").read_bytes() == before

    held = tmp_path / "held"
    held.mkdir()
    (held / "status.json").write_text('{"status": "RUNNING"}\n')
    with open(held / ".taoctl_lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live run holds it
        result = taoctl("classification", "train", "-e", other, "-r", held, env=QUIET, timeout=300)
    assert result.returncode == 2 and "is in use by" in result.stderr
    assert (held / "status.json").read_text() == '{"status": "RUNNING"}\n'


# --------------------------------------------------------------------------- 2. interrupted export
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_export_is_one_line_and_leaves_no_temporary_file(trained, taoctl, tmp_path, signum):
    out = tmp_path / "out"
    out.mkdir()
    job = taoctl.start("classification", "export", "-m", trained["model"], "-o", out / "m.onnx", "-e",
                       trained["spec"], env=QUIET, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(out.iterdir()), "the export's temporary folder", job)  # torch.onnx is exporting
        job.send_signal(signum)  # the launcher passes it on, as Ctrl-C in a terminal
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    # A small model's export may finish before the signal lands (then its exit is 128 + signum or 0,
    # all outputs written); otherwise it is one line and nothing in the folder, never a crash (SIGSEGV
    # came from an interrupt raised inside torch's exporter) nor a partial file.
    written = sorted(p.name for p in out.iterdir())
    if written:
        assert written == ["classmap.json", "m.onnx"] and job.returncode in (0, 128 + signum), err
        onnx.checker.check_model(str(out / "m.onnx"))
    else:
        assert job.returncode == 128 + signum, err
        assert err.strip().splitlines() in (["taoctl: export interrupted"], ["taoctl: interrupted"])


CHILD_IMPORTING = """
import sys, time
from taoctl.engine.cli import handle_interrupts
handle_interrupts()
sys.path.insert(0, ".")
try:
    import waits_for_the_signal
except KeyboardInterrupt:
    sys.exit("interrupted inside the import")
try:
    while True:
        time.sleep(0.01)
except KeyboardInterrupt:
    print("interrupted after the import", waits_for_the_signal.DONE)
"""


def test_an_interrupt_during_an_import_is_raised_once_the_import_is_done(tmp_path):
    """onnx's extension module runs Python from C++ while it initialises: a KeyboardInterrupt raised
    there aborted the export (SIGABRT, SIGSEGV) and left its temporary folder behind."""
    (tmp_path / "waits_for_the_signal.py").write_text(
        "import pathlib, time\n"
        "pathlib.Path('started').touch()\n"
        "while not pathlib.Path('signalled').exists():\n"
        "    time.sleep(0.01)\n"
        "DONE = True\n")
    job = subprocess.Popen([sys.executable, "-c", CHILD_IMPORTING], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), "the import", job)
        job.send_signal(signal.SIGTERM)
        (tmp_path / "signalled").touch()
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert (job.returncode, out) == (0, "interrupted after the import True\n"), err


CHILD_MAKING_A_FOLDER = """
import os, signal, sys, tempfile
from taoctl.engine.cli import handle_interrupts, temporary_directory
handle_interrupts()
make = tempfile.mkdtemp

def make_then_interrupt(**kwargs):
    folder = make(**kwargs)
    os.kill(os.getpid(), signal.SIGTERM)  # `taoctl stop` at the moment the folder appears
    return folder

tempfile.mkdtemp = make_then_interrupt
try:
    with temporary_directory(sys.argv[1]):
        sys.exit("the block ran")
except KeyboardInterrupt:
    print(sorted(os.listdir(sys.argv[1])))
"""


def test_an_interrupt_as_a_temporary_folder_is_made_leaves_no_folder(tmp_path):
    result = subprocess.run([sys.executable, "-c", CHILD_MAKING_A_FOLDER, tmp_path], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


# --------------------------------------------------------------------------- 3. stop with DataLoader workers
def test_stopping_a_train_with_dataloader_workers_is_an_interrupt(trained, taoctl, tmp_path):
    spec = write_spec(tmp_path / "s.txt", trained["data"], epochs=10000, workers=2)
    results = tmp_path / "run"
    env = {**QUIET, "TAOCTL_HOME": str(tmp_path)}
    job = taoctl.start("classification", "train", "-e", spec, "-r", results, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        wait_for(training(results), "an epoch", job)
        assert taoctl("stop", "--all", env=env).returncode == 0
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 143, err
    assert [line for line in err.splitlines() if not line.startswith("Epoch ")] == ["taoctl: train interrupted"]
    assert (status_lines(results)[-1]["status"], status_lines(results)[-1]["message"]) == \
        ("FAILURE", "Training interrupted.")


# --------------------------------------------------------------------------- 4. full disk during export
class Doubler(nn.Module):
    def forward(self, x):
        return x * 2


def adapter() -> export.ExportAdapter:
    return export.ExportAdapter(module=Doubler(), input_names=("input",), output_names=("output",),
                                dynamic_axes={"input": {0: export.BATCH}, "output": {0: export.BATCH}})


@pytest.mark.parametrize("opset", [13, 18])
def test_export_onto_a_full_disk_names_the_output(tmp_path, monkeypatch, opset):
    """Both exporters' writes fail as a full disk would (ENOSPC on the temporary file)."""
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", no_space)
    sample = {"input": np.ones((2, 3), dtype=np.float32)}
    with pytest.raises(OutOfSpaceError, match=rf"^no space left on device writing {tmp_path}/m\.onnx$"):
        export.export_model(adapter(), tmp_path / "m.onnx", sample, opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_export_onto_a_real_full_disk_is_one_line(trained, taoctl, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        result = taoctl("classification", "export", "-m", trained["model"], "-o", disk / "m.onnx", "-e",
                        trained["spec"], env=QUIET, timeout=300)
        assert result.returncode == 2
        assert error_lines(result.stderr) == [f"taoctl: no space left on device writing {disk}/m.onnx"]
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --------------------------------------------------------------------------- 5. DDP
def ddp_ranks(spec: Path) -> dict[int, int]:
    """{local rank: pid} of the torchrun workers training ``spec``."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            environ = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
        except (OSError, ValueError):
            continue
        if b"taoctl.launcher.entrypoint" in command and str(spec).encode() in command and b"LOCAL_RANK" in environ:
            ranks[int(environ[b"LOCAL_RANK"])] = int(proc.name)
    return ranks


@pytest.mark.parametrize("how", ["kill one worker", "taoctl stop"])
def test_a_ddp_run_ends_in_one_line(trained, taoctl, tmp_path, how):
    spec = write_spec(tmp_path / "s.txt", trained["data"], epochs=10000)
    results = tmp_path / "run"
    env = {**QUIET, "TAOCTL_HOME": str(tmp_path)}
    job = taoctl.start("classification", "train", "-e", spec, "-r", results, "-np", "2", env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(training(results), "an epoch", job)
        if how == "kill one worker":
            rank1 = ddp_ranks(spec)[1]
            os.kill(rank1, signal.SIGKILL)
            expected, code = f"taoctl: train process rank 1 (pid {rank1}) was killed by SIGKILL; the other processes " \
                             f"were stopped", 137
        else:
            assert taoctl("stop", "--all", env=env).returncode == 0
            expected, code = "taoctl: train interrupted", 143
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == code, err
    assert [line for line in err.splitlines() if not line.startswith("Epoch ")] == [expected]
    assert status_lines(results)[-1]["status"] == "FAILURE"
    if how == "taoctl stop":
        assert status_lines(results)[-1]["message"] == "Training interrupted."


AGENT_FAILURE = """\
W1201 11:07:35.628000 25836 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 25867 closing signal SIGTERM
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 25867)  (SIGTERM)
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : 2 (pid: 25868)
============================================================
"""


def test_the_agents_output_becomes_the_workers_one_line():
    """Progress passes as it comes, split anywhere; each worker's same error line once; the agent's exit code
    replaced by the failed worker's."""
    out = io.StringIO()
    output = torchrun.AgentOutput(out, verbose=False)
    text = ("Epoch 1/2 step 1/1\r" + "taoctl: loss became nan\n" * 2 + AGENT_FAILURE).encode()
    for start in range(0, len(text), 7):
        output.feed(text[start:start + 7])
    output.close()
    assert out.getvalue() == "Epoch 1/2 step 1/1\r"
    assert torchrun._report(output, 1, "train", None, out) == 2
    assert out.getvalue().splitlines()[-1] == "taoctl: loss became nan"


def test_a_teardown_abort_of_a_stopped_run_is_not_its_line():
    """A stopped worker or agent may die in std::terminate (a c10d thread still running at exit): after an
    interrupt that line is not the run's; before one it is shown."""
    for stopping, shown in ((True, ""), (False, "terminate called without an active exception\n")):
        out = io.StringIO()
        output = torchrun.AgentOutput(out, verbose=False)
        output.stopping = stopping
        output.feed(b"terminate called without an active exception\n")
        output.close()
        assert out.getvalue() == shown


# --------------------------------------------------------------------------- 6. --log_file naming a spec path
def test_a_log_file_that_the_spec_names_is_refused_before_it_is_opened(trained, taoctl, tmp_path):
    model = tmp_path / "m.tlt"
    model.write_bytes(trained["model"].read_bytes())
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    spec = write_spec(tmp_path / "s.txt", trained["data"], eval_model=model)
    result = taoctl("classification", "evaluate", "-e", spec, "--log_file", model, env=QUIET)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"taoctl: --log_file {model} is also the input eval_config.model_path "
                                          f"({model}): choose another output"]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


def test_a_log_file_still_holds_a_spec_error(trained, taoctl, tmp_path):
    spec = tmp_path / "s.txt"
    spec.write_text(trained["spec"].read_text().replace("n_epochs: 1", "n_epochs: 0"))
    log = tmp_path / "logs" / "train.log"
    result = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r", "--log_file", log, env=QUIET)
    assert result.returncode == 2
    assert log.read_text().splitlines()[-1] == error_lines(result.stderr)[-1]
    assert "n_epochs must be >= 1" in log.read_text()


def test_writing_a_file_over_a_folder_is_refused_before_writing(tmp_path):
    """`calibration_tensorfile -o FOLDER` failed after its work with `internal error: IsADirectoryError`."""
    from taoctl.errors import TaoctlError
    from taoctl.fileio import write_atomic

    (tmp_path / "out").mkdir()
    with pytest.raises(TaoctlError, match=rf"^{tmp_path}/out is a folder: name a file to write$"):
        write_atomic(tmp_path / "out", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any((tmp_path / "out").iterdir())
