"""`spec check`, `--dry-run` and the subtask itself refuse the same specs with the same line.

Each spec kind's ``validate`` (arch registered, n_layers allowed, preprocess_mode known ...)
runs inside the spec loader, so the launcher's torch-free `spec check`, the dry run and the real
subtask cannot disagree (issue 16: `spec check` and `--dry-run` said OK for `arch: "resnt"`,
`n_layers: 7`, `preprocess_mode: "banana"`, `input_image_size: "3,0,64"`, `reg_config { type:
"L3" }`, which train then refused).
"""

from __future__ import annotations

import re

import pytest
from conftest import make_colour_images

from taoctl.engine.backbones import ARCHS

GOOD = """\
model_config {{
  arch: "resnet"
  n_layers: 10
  input_image_size: "3,32,32"
}}
train_config {{
  train_dataset_path: "{train}"
  val_dataset_path: "{val}"
  optimizer {{ sgd {{ lr: 0.01 momentum: 0.9 }} }}
  lr_config {{ step {{ learning_rate: 0.01 step_size: 1 gamma: 1 }} }}
  reg_config {{ type: "L2" scope: "Conv2D,Dense" weight_decay: 0.00005 }}
  batch_size_per_gpu: 4
  n_epochs: 1
  preprocess_mode: "caffe"
}}
"""

# (name, the good spec's text -> the bad one's, the one line every command must answer, less its position)
BAD = [
    ("unknown_arch", ('arch: "resnet"', 'arch: "resnt"'),
     "model_config.arch: unknown arch 'resnt' (did you mean \"resnet\"?)"),
    ("n_layers_the_arch_lacks", ("n_layers: 10", "n_layers: 7"),
     "model_config.n_layers: n_layers 7 is not available for resnet (10, 18, 34, 50, 101)"),
    ("family_without_n_layers", ("n_layers: 10", ""),
     "model_config.arch: arch resnet needs n_layers (10, 18, 34, 50, 101)"),
    ("input_size_zero", ('"3,32,32"', '"3,0,64"'),
     "model_config.input_image_size '3,0,64': height and width must be at least 16"),
    ("preprocess_mode", ('preprocess_mode: "caffe"', 'preprocess_mode: "banana"'),
     'train_config.preprocess_mode: unknown preprocessing mode "banana"; use caffe, torch or tf'),
    ("regularizer_type", ('type: "L2"', 'type: "L3"'),
     'train_config.reg_config.type: unknown regularizer "L3"; use L1, L2 or None'),
    ("regularizer_scope", ('scope: "Conv2D,Dense"', 'scope: "Conv3D"'),
     "train_config.reg_config.scope: unknown layer type(s) ['conv3d']; use Conv2D, Dense"),
    ("byom_model", ('arch: "resnet"', 'arch: "resnet" byom_model: "m.tltb"'),
     "model_config.byom_model: bring-your-own-model (TAO BYOM .tltb) is not supported"),
    ("distillation_without_teacher", ("n_epochs: 1", "n_epochs: 1\n  distillation { alpha: 0.5 }"),
     "train_config.distillation.teacher_model_path is required to distil"),
]


# More values of the kinds above, refused by the same check (so `spec check` alone is run on them).
SAME_CHECK = [
    (('arch: "resnet"', 'arch: "resnet_foo"'), "model_config.arch: unknown arch 'resnet_foo'"),
    (('"3,32,32"', '"3,8,8"'), "model_config.input_image_size '3,8,8': height and width must be at least 16"),
    (('"3,32,32"', '"2,32,32"'), "model_config.input_image_size '2,32,32': channels must be 1 or 3, got 2"),
    (('arch: "resnet"', 'arch: "resnet:34"'), "model_config.n_layers: arch 'resnet:34' contradicts n_layers 10"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_colour_images(tmp_path_factory.mktemp("agreement"), {"train": 2, "val": 1})


def write_spec(folder, data, name: str, change=None):
    text = GOOD.format(train=data / "train", val=data / "val")
    if change:
        assert change[0] in text
        text = text.replace(*change)
    path = folder / f"{name}.txt"
    path.write_text(text)
    return path


def last_line(result) -> str:
    return (result.stdout + result.stderr).strip().splitlines()[-1]


@pytest.mark.parametrize("name, change, message", BAD, ids=[case[0] for case in BAD])
def test_spec_check_dry_run_and_train_refuse_with_the_same_line(name, change, message, data, tmp_path, taoctl):
    spec = write_spec(tmp_path, data, name, change)
    checked = taoctl("spec", "check", "classification", spec)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    line = last_line(checked)
    # One line: where the field was set in the file, then the message.
    assert re.fullmatch(rf"{re.escape(str(spec))}:\d+:\d+: {re.escape(message)}.*", line), line
    results = tmp_path / "results"
    for flags in (["--dry-run"], []):
        result = taoctl("classification", "train", "-e", spec, "-r", results, *flags)
        assert result.returncode == 2, result.stdout + result.stderr
        assert last_line(result) == f"taoctl: {line}", (flags, result.stderr)
        assert "Traceback" not in result.stderr
    assert not results.exists(), "a spec refused on loading leaves nothing behind"


def test_spec_check_refuses_other_values_of_the_same_kinds(data, tmp_path, taoctl):
    specs = [write_spec(tmp_path, data, f"same{i}", change) for i, (change, _) in enumerate(SAME_CHECK)]
    result = taoctl("spec", "check", "classification", *specs)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).splitlines()
    for spec, (_, message) in zip(specs, SAME_CHECK):
        assert any(re.fullmatch(rf"{re.escape(str(spec))}:\d+:\d+: {re.escape(message)}.*", line) for line in lines), \
            (message, lines)


def test_an_override_is_named_as_where_the_bad_value_came_from(data, tmp_path, taoctl):
    spec = write_spec(tmp_path, data, "good")
    expected = ('taoctl: override "model_config.n_layers=7": model_config.n_layers: n_layers 7 is not available '
                "for resnet (10, 18, 34, 50, 101)")
    for flags in (["--dry-run"], []):
        result = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r", "model_config.n_layers=7", *flags)
        assert result.returncode == 2 and last_line(result) == expected, result.stderr


def test_the_good_spec_passes_spec_check_and_the_dry_run(data, tmp_path, taoctl):
    spec = write_spec(tmp_path, data, "good")
    assert taoctl("spec", "check", "classification", spec).returncode == 0
    result = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert last_line(result) == f"Dry run OK: {spec} parses and every path it names exists."


def test_dry_run_refuses_a_file_where_the_spec_needs_a_folder(data, tmp_path, taoctl):
    spec = write_spec(tmp_path, data, "file_as_folder", (f'train_dataset_path: "{data / "train"}"',
                                                         f'train_dataset_path: "{tmp_path / "file_as_folder.txt"}"'))
    # spec check reads values only (it runs where the data may not be); the dry run checks the paths.
    assert taoctl("spec", "check", "classification", spec).returncode == 0
    dry = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r", "--dry-run")
    assert dry.returncode == 2
    assert f"train_config.train_dataset_path: {spec} is a file, not a folder" in dry.stderr
    train = taoctl("classification", "train", "-e", spec, "-r", tmp_path / "r")
    assert train.returncode == 2
    assert f"train_config.train_dataset_path path {spec}: not a folder" in last_line(train)


DETECTORS = {
    "detectnet_v2": ('model_config {{ arch: "{arch}" num_layers: {n} }}\n',
                     "model_config.arch", "model_config.num_layers"),
    "yolo_v3": ('yolov3_config {{ arch: "{arch}" nlayers: {n} big_anchor_shape: "[(116, 90)]" '
                'mid_anchor_shape: "[(30, 61)]" small_anchor_shape: "[(10, 13)]" }}\n',
                "yolov3_config.arch", "yolov3_config.nlayers"),
}


@pytest.mark.parametrize("task", sorted(DETECTORS))
def test_detector_specs_name_a_registered_backbone(task, tmp_path, taoctl):
    template, arch_field, layers_field = DETECTORS[task]
    cases = {"good": ("darknet", 53, None),
             "unknown": ("resnt", 18, f"{arch_field}: unknown arch 'resnt'"),
             "layers": ("resnet", 7, f"{layers_field}: n_layers 7 is not available for resnet")}
    for name, (arch, n, message) in cases.items():
        spec = tmp_path / f"{name}.txt"
        spec.write_text(template.format(arch=arch, n=n))
        result = taoctl("spec", "check", task, spec)
        if message is None:
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            assert result.returncode == 2
            assert re.fullmatch(rf"{re.escape(str(spec))}:1:\d+: {re.escape(message)}.*", last_line(result)), \
                last_line(result)


def test_the_arch_table_lists_exactly_the_registered_networks():
    from taoctl.engine.backbones import list_models
    from taoctl.engine.backbones.registry import ModelEntry, register

    assert sorted(ARCHS) == list_models()
    with pytest.raises(ValueError, match="not listed"):
        register(ModelEntry("resnet12", "resnet", 12, build=None))
    assert "resnet12" not in list_models()


def test_the_validators_tables_match_the_code_that_trains():
    from taoctl.engine.data.imagefolder import Normalizer
    from taoctl.engine.optim import MAKENET_SCOPES
    from taoctl.tasks.classification import spec

    assert spec.PREPROCESS_MODES == Normalizer.MODES
    assert {s.lower() for s in spec.REGULARIZER_SCOPES} == set(MAKENET_SCOPES)
