"""An output never overwrites an input: every subtask, dataset_convert and augment refuse it before writing.

Through the real `taoctl` command on a tiny trained classifier and a tiny KITTI set: each refusal
is one line, exit 2, and the input's bytes (or the data folder's listing) are unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_colour_images
from PIL import Image

from taoctl.errors import TaoctlError
from taoctl.outputs import refuse_overwrites

SPEC = """
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" }}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ lr: 0.01 momentum: 0.9 }} }}
  lr_config {{ step {{ learning_rate: 0.01 step_size: 10 gamma: 0.5 }} }}
  batch_size_per_gpu: 4
  n_epochs: 1
  n_workers: 0
}}
eval_config {{ eval_dataset_path: "{data}/val" batch_size: 4 }}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("guard")
    data = root / "data"
    make_colour_images(data, {"train": 4, "val": 2})
    spec = root / "spec.txt"
    spec.write_text(SPEC.format(data=data))
    taoctl("classification", "train", "-e", spec, "-r", root / "run", check=True)
    # The placeholders the cases below write: the temporary root, the data, the spec, the trained model.
    return {"R": root, "D": data, "S": spec, "M": root / "run" / "weights" / "resnet_001.tlt"}


def _refused(result, *expected: str) -> None:
    """The run exited 2 with one ``taoctl:`` line on stderr (no traceback) holding each expected text."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taoctl: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


# (arguments, the input that must keep its bytes, what the error line says), with `trained`'s placeholders.
CASES = {
    "prune -o is -m": (["prune", "-m", "{M}", "-o", "{M}"], "{M}",
                       "-o {M} is also the input -m ({M}): choose another output"),
    "export --cal_cache_file is -m": (
        ["export", "-m", "{M}", "-o", "{R}/model.onnx", "--data_type", "int8", "--cal_image_dir", "{D}/val",
         "--batches", "1", "--batch_size", "2", "--cal_cache_file", "{M}"], "{M}",
        "--cal_cache_file {M} is also the input -m ({M})"),
    "export --cal_data_file is -m": (
        ["export", "-m", "{M}", "-o", "{R}/model.onnx", "--data_type", "int8", "--cal_image_dir", "{D}/val",
         "--batches", "1", "--batch_size", "2", "--cal_data_file", "{M}"], "{M}",
        "--cal_data_file {M} is also the input -m ({M})"),
    "calibration_tensorfile -o is the spec": (["calibration_tensorfile", "-e", "{S}", "-o", "{S}"], "{S}",
                                              "-o {S} is also the input -e ({S})"),
    "--log_file is the spec": (["evaluate", "-e", "{S}", "-m", "{M}", "--log_file", "{S}"], "{S}",
                               "--log_file {S} is also the input -e ({S})"),
    "-o is a symlink to -m": (["prune", "-m", "{M}", "-o", "{R}/link.tlt"], "{M}",
                              "-o {R}/link.tlt is also the input -m ({M})"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(trained, taoctl, case):
    link = trained["R"] / "link.tlt"
    if not link.is_symlink():
        link.symlink_to(trained["M"])
    args, protected, expected = CASES[case]
    protected = Path(protected.format(**trained))
    before = protected.read_bytes()
    _refused(taoctl("classification", *(arg.format(**trained) for arg in args)), expected.format(**trained))
    assert protected.read_bytes() == before
    assert link.is_symlink() and link.resolve() == trained["M"].resolve()


def test_results_dir_inside_the_training_data_is_refused(trained, taoctl):
    data, spec = trained["D"], trained["S"]
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    result = taoctl("classification", "train", "-e", spec, "-r", data / "train" / "run")
    _refused(result, f"-r {data / 'train' / 'run'} is inside the input train_config.train_dataset_path")
    # The next run would have learned a class named after a results subfolder (tensorboard, weights).
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


@pytest.mark.parametrize("args, flag", [
    (["train", "-e", "{S}", "-r", ""], "-r"),
    (["prune", "-m", "{M}", "-o", ""], "-o"),
    (["evaluate", "-e", "{S}", "-m", "{M}", "-r", "{R}/eval", "--log_file", ""], "--log_file"),
], ids=["-r", "-o", "--log_file"])
def test_an_empty_output_path_is_refused(trained, taoctl, args, flag):
    result = taoctl("classification", *(arg.format(**trained) for arg in args))
    _refused(result, f"{flag} is empty")
    assert not (trained["R"] / "eval").exists()


# --- dataset_convert and augment ---------------------------------------------------------------

def _make_kitti(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        Image.fromarray(np.full((48, 64, 3), 90 + 40 * i, np.uint8)).save(root / "images" / f"{i:06d}.png")
        (root / "labels" / f"{i:06d}.txt").write_text("car 0.00 0 0.00 10.0 8.0 40.0 30.0 0 0 0 0 0 0 0\n")


@pytest.fixture
def kitti(tmp_path):
    _make_kitti(tmp_path / "kitti")
    return tmp_path, tmp_path / "kitti"


def _listing(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_dataset_convert_refuses_shards_inside_the_image_folder(kitti, taoctl):
    tmp, dataset = kitti
    spec = tmp / "convert.txt"
    spec.write_text(f'kitti_config {{ root_directory_path: "{dataset}" image_dir_name: "images" '
                    f'label_dir_name: "labels" image_extension: ".png" partition_mode: "random" '
                    f'num_partitions: 1 num_shards: 1 }}\n')
    before = _listing(dataset)
    result = taoctl("detectnet_v2", "dataset_convert", "-d", spec, "-o", dataset / "images" / "train")
    _refused(result, f"-o {dataset / 'images' / 'train'} is inside the input kitti_config.image_dir_name")
    assert _listing(dataset) == before


def test_augment_refuses_an_output_inside_the_dataset(kitti, taoctl):
    tmp, dataset = kitti
    spec = tmp / "augment.txt"
    spec.write_text('spatial_config { flip_config { flip_horizontal: true } }\n'
                    'dataset_config { image_path: "images" label_path: "labels" }\n')
    before = _listing(dataset)
    result = taoctl("augment", "-a", spec, "-d", dataset, "-o", dataset / "augmented")
    _refused(result, f"-o {dataset / 'augmented'} is inside the input -d ({dataset})")
    assert _listing(dataset) == before


def test_dataset_augmentation_refuses_writing_over_its_image_folder(kitti, taoctl):
    tmp, dataset = kitti
    spec = tmp / "augmentation.yaml"
    spec.write_text(f"data:\n  image_dir: {dataset / 'images'}\n  ann_path: {dataset / 'labels'}\n"
                    f"  output_dataset: {dataset}\nspatial_aug:\n  flip:\n    flip_horizontal: true\n")
    before = _listing(dataset)
    result = taoctl("dataset", "augmentation", "-e", spec)
    _refused(result, f"data.output_dataset/images {dataset / 'images'} is also the input data.image_dir")
    assert _listing(dataset) == before


# --- what is allowed, and other spellings of one file --------------------------------------------

def test_an_output_folder_holding_an_input_is_allowed(tmp_path):
    model = tmp_path / "run" / "weights" / "model.tlt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    refuse_overwrites({"-m": model}, {"-r": tmp_path / "run", "-o": tmp_path / "run" / "weights" / "pruned.tlt",
                                      "--log_file": tmp_path / "run" / "log.txt"})


def test_a_hard_link_and_a_relative_spelling_are_the_same_file(tmp_path, monkeypatch):
    model = tmp_path / "model.tlt"
    model.write_bytes(b"weights")
    os.link(model, tmp_path / "hard.tlt")
    with pytest.raises(TaoctlError, match=r"^-o .*hard.tlt is also the input -m"):
        refuse_overwrites({"-m": model}, {"-o": tmp_path / "hard.tlt"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaoctlError, match=r"^-o \./sub/\.\./model.tlt is also the input -m"):
        (tmp_path / "sub").mkdir()
        refuse_overwrites({"-m": model}, {"-o": "./sub/../model.tlt"})


def test_two_outputs_that_are_one_file_are_refused(tmp_path):
    with pytest.raises(TaoctlError, match=r"^--cal_cache_file .*m.onnx is also the output -o"):
        refuse_overwrites({}, {"-o": tmp_path / "m.onnx", "--cal_cache_file": tmp_path / "m.onnx"})
