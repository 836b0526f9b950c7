"""Full disks fail with one line and leave nothing partial; re-runs never mix stale outputs; files honour the umask.

The full disk is a real one: a small tmpfs mounted for the test (root, as in CI); where mounting
is not allowed those tests are skipped and the fake-error tests below still run.
"""

import errno
import os
import subprocess
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

from taoctl.engine.cli import run_command
from taoctl.engine.data import kitti, samples, tfrecord
from taoctl.fileio import OutOfSpaceError, atomic_path, write_atomic
from taoctl.tasks.augment.scripts import augment
from taoctl.tasks.detection_common import dataset_convert

AUGMENT_SPEC = ('spatial_config { flip_config { flip_horizontal: true } }\n'
                'dataset_config { image_path: "images" label_path: "labels" }\n')


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: the first shards of the sample dataset fit, the rest do not."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture(scope="module")
def sample_kitti(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    samples.generate(root, seed=0)
    return root / "kitti"


def _convert_spec(tmp_path, root, num_shards):
    spec = tmp_path / f"convert_{num_shards}.txt"
    spec.write_text(f'kitti_config {{ root_directory_path: "{root}" image_dir_name: "images" label_dir_name: "labels" '
                    f'image_extension: ".png" partition_mode: "random" num_partitions: 2 val_split: 20 '
                    f'num_shards: {num_shards} }}\nimage_directory_path: "{root}"\n')
    return spec


def _run(command, *args, capsys):
    """A subtask's command in this process, as the entrypoint runs it: (exit code, stdout, stderr)."""
    code = run_command(command, [str(a) for a in args], prog_name="taoctl")
    out, err = capsys.readouterr()
    return code, out, err


def _kitti_folder(root, count):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(count)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        (root / "labels" / f"{i:03d}.txt").write_text(
            "car 0.00 0 0.00 5.00 5.00 30.00 30.00 0.00 0.00 0.00 0.00 0.00 0.00 0.00\n")
    return root


# --- a full disk ---------------------------------------------------------------------------------

def test_convert_on_a_full_disk_names_the_shard_and_leaves_nothing(sample_kitti, small_disk, tmp_path, capsys):
    spec = _convert_spec(tmp_path, sample_kitti, 4)
    code, _, err = _run(dataset_convert.command, "-d", spec, "-o", small_disk / "kitti", "-r", tmp_path / "res",
                        capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"taoctl: no space left on device writing {small_disk}/kitti-fold-")
    assert "internal error" not in err and "Traceback" not in err
    # No shard at all, and no hidden temporary: the shards appear all together or not at all.
    assert sorted(os.listdir(small_disk)) == []


def test_atomic_write_on_a_full_disk_keeps_the_old_file(small_disk):
    target = small_disk / "model.tlt"
    write_atomic(target, b"old")
    with pytest.raises(OutOfSpaceError) as raised:
        write_atomic(target, os.urandom(256 * 1024))
    assert str(raised.value) == f"no space left on device writing {target}" and raised.value.exit_code == 2
    assert target.read_bytes() == b"old" and os.listdir(small_disk) == ["model.tlt"]


def test_augment_on_a_full_disk_names_the_output_and_leaves_nothing(small_disk, tmp_path, capsys):
    data = _kitti_folder(tmp_path / "data", 12)
    spec = tmp_path / "aug.txt"
    spec.write_text(AUGMENT_SPEC)
    code, _, err = _run(augment.command, "-a", spec, "-d", data, "-o", small_disk / "out", capsys=capsys)
    assert code == 2
    assert err.startswith(f"taoctl: no space left on device writing {small_disk}/out/images/")
    assert len(err.strip().splitlines()) == 1 and os.listdir(small_disk) == []


def test_cleanup_that_fails_never_hides_the_error(tmp_path, monkeypatch):
    def unlink_on_a_full_disk(self, missing_ok=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    with pytest.raises(RuntimeError, match="the original error"), atomic_path(tmp_path / "report.json") as tmp:
        tmp.write_text("half")
        monkeypatch.setattr(Path, "unlink", unlink_on_a_full_disk)
        raise RuntimeError("the original error")


def test_a_failed_write_outside_fileio_is_one_line_naming_its_file(capsys):
    @click.command()
    def writes_a_log():
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/results/train.log")

    code, _, err = _run(writes_a_log, capsys=capsys)
    assert (code, err) == (2, "taoctl: disk quota exceeded writing /results/train.log\n")


# --- stale outputs -------------------------------------------------------------------------------

def test_reconverting_with_fewer_shards_leaves_only_the_new_ones(sample_kitti, tmp_path, capsys):
    out = tmp_path / "tf"
    out.mkdir()
    foreign = [out / "kitti-notes.txt", out / "kitti", out / "kitti2-fold-000-of-002-shard-00000-of-00004"]
    for path in foreign:
        path.write_text("not a shard of this prefix")
    for num_shards in (4, 2):
        code, _, err = _run(dataset_convert.command, "-d", _convert_spec(tmp_path, sample_kitti, num_shards),
                            "-o", out / "kitti", "-r", tmp_path / "res", capsys=capsys)
        assert code == 0, err
    shards = sorted(p.name for p in out.glob("kitti-fold-*"))
    assert shards == [f"kitti-fold-{f:03d}-of-002-shard-{s:05d}-of-00002" for f in (0, 1) for s in (0, 1)]
    assert all(p.read_text() == "not a shard of this prefix" for p in foreign)
    # The reader's glob sees each frame once.
    frames = kitti.read_tfrecords(str(out / "kitti") + "-fold*", sample_kitti, ".png")
    assert len(frames) == len({f.frame_id for f in frames}) == 200


def test_augment_refuses_a_foreign_folder_and_replaces_its_own_output(tmp_path, capsys):
    spec = tmp_path / "aug.txt"
    spec.write_text(AUGMENT_SPEC)
    foreign = tmp_path / "theirs"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "holiday.png").write_bytes(b"a user's photo")
    big, small = _kitti_folder(tmp_path / "big", 5), _kitti_folder(tmp_path / "small", 3)
    code, _, err = _run(augment.command, "-a", spec, "-d", small, "-o", foreign, capsys=capsys)
    assert code == 2 and err == (f"taoctl: output folder {foreign / 'images'} is not empty and was not written by "
                                 f"taoctl augment; name a new or empty folder\n")
    assert sorted(os.listdir(foreign / "images")) == ["holiday.png"] and not (foreign / "labels").exists()

    out = tmp_path / "out"
    assert _run(augment.command, "-a", spec, "-d", big, "-o", out, capsys=capsys)[0] == 0
    code, stdout, err = _run(augment.command, "-a", spec, "-d", small, "-o", out, capsys=capsys)
    assert code == 0, err
    assert "Augmented 3 images" in stdout
    assert sorted(p.name for p in (out / "images").glob("*.png")) == ["000.png", "001.png", "002.png"]
    frames, report = kitti.read_kitti(out / "images", out / "labels")
    assert len(frames) == 3 and report.clean


# --- permissions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(umask, file_mode, folder_mode, tmp_path, capsys):
    spec = tmp_path / "aug.txt"
    spec.write_text(AUGMENT_SPEC)
    data = _kitti_folder(tmp_path / "data", 2)
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "report.json", "{}")
        with tfrecord.TFRecordWriter(tmp_path / "x.tfrecord") as writer:
            writer.write(b"record")
        code, _, err = _run(augment.command, "-a", spec, "-d", data, "-o", tmp_path / "out", capsys=capsys)
    finally:
        os.umask(previous)
    assert code == 0, err
    for path in (tmp_path / "report.json", tmp_path / "x.tfrecord", tmp_path / "out" / "images" / "000.png",
                 tmp_path / "out" / "labels" / "001.txt"):
        assert oct(path.stat().st_mode & 0o777) == oct(file_mode), path
    assert oct((tmp_path / "out" / "images").stat().st_mode & 0o777) == oct(folder_mode)
