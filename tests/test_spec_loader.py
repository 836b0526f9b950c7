"""The spec loader: every error kind with its exact FILE:LINE:COL, did-you-mean, legacy
warnings, YAML schemas, dry-run paths, kind detection and `taoctl spec check`."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest

from taoctl.engine import spec as specs
from taoctl.errors import SpecError
from taoctl.tasks.classification import spec as classification

SRC = Path(__file__).resolve().parent.parent / "src"

GOOD = """\
model_config {
  arch: "resnet"
  n_layers: 18
  input_image_size: "3,224,224"
  resize_interpolation_method: BICUBIC
  freeze_blocks: [0, 1]
}
train_config {
  train_dataset_path: "TRAIN"
  val_dataset_path: "VAL"
  optimizer { sgd { lr: 0.01 momentum: 0.9 } }
  batch_size_per_gpu: 8
  n_epochs: 2
  lr_config { step { learning_rate: 0.006 step_size: 10 gamma: 0.1 } }
  image_mean { key: "r" value: 103.9 }
}
"""


def write(tmp_path, text, name="spec.txt"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        classification.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_spec_loads_with_values(tmp_path):
    spec = classification.load(write(tmp_path, GOOD), subtask="train")
    assert spec.model_config.arch == "resnet"
    assert spec.model_config.n_layers == 18
    assert list(spec.model_config.freeze_blocks) == [0, 1]
    assert spec.model_config.resize_interpolation_method == 1  # BICUBIC
    assert spec.train_config.lr_config.WhichOneof("lr_scheduler") == "step"
    assert spec.train_config.image_mean["r"] == pytest.approx(103.9)


@pytest.mark.parametrize("text, expected", [
    ('model_config {\n  arch: "resnet"\n  n_layrs: 18\n}\n',
     ':3:3: unknown field "n_layrs" in model_config (did you mean "n_layers"?)'),
    ('model_config {\n  arch: "resnet"\n  n_layers: ten\n}\n',
     ':3:13: n_layers expects an unsigned integer, got "ten"'),
    ('model_config {\n  dropout: high\n}\n', ':2:12: dropout expects a number, got "high"'),
    ('model_config {\n  use_bias: maybe\n}\n', ':2:13: use_bias expects true or false, got "maybe"'),
    ('model_config {\n  arch: resnet\n}\n', ':2:9: arch expects a quoted string (e.g. "text"), got "resnet"'),
    ('model_config {\n  resize_interpolation_method: BICUBC\n}\n',
     ':2:32: resize_interpolation_method expects one of BILINEAR, BICUBIC, got "BICUBC"'),
    ('model_config {\n  n_layers: 18\n  n_layers: 34\n}\n',
     ':3:3: field "n_layers" set twice in model_config (first at line 2); it takes one value'),
    ('model_config { arch: "a" }\nmodel_config { arch: "b" }\n',
     ':2:1: field "model_config" set twice in the top level (Experiment) (first at line 1)'),
    ('train_config {\n  lr_config { step { } cosine { } }\n}\n',
     ':2:24: train_config.lr_config sets both "step" and "cosine"; lr_scheduler takes only one of them'),
    ('model_config {\n  arch: "resnet"\n', ':2:9: end of file inside "model_config {" opened at line 1'),
    ('model_config {\n  arch: "resnet" }\n}\n', ':3:1: unmatched "}": no section is open here'),
    ('model_config: 3\n', ':1:15: model_config expects a section in braces ("{ ... }"), got "3"'),
    ('modl_config {\n}\n', ':1:1: unknown field "modl_config" in the top level (Experiment) '
                           '(did you mean "model_config"?)'),
    ('train_config {\n  optimizer { sgd { lr: 0.1 } }\n  optimizer { adam { } }\n}\n',
     ':3:3: field "optimizer" set twice in train_config'),
    ('model_config {\n  freeze_blocks: [0, x]\n}\n', ':2:22: freeze_blocks expects an unsigned integer, got "x"'),
    ('model_config {\n  arch: "unterminated\n}\n', ':2:9: arch: string is not closed (a " is missing on this line)'),
    ('model_config {\n  arch: "resnet" ;; \n}\n', ':2:19: expected a field name in model_config, got ";"'),
    ('model_config {\n  arch "resnet"\n}\n', ':2:8: syntax error: expected ":"'),
])
def test_error_positions_and_wording(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(str(path) + ":")
    assert expected in message, message


def test_missing_required_values_are_named_by_path(tmp_path):
    path = write(tmp_path, 'model_config {\n  input_image_size: "3,224,224"\n}\n')
    assert error_of(path) == f"{path}: missing required value model_config.arch"
    message = error_of(write(tmp_path, 'model_config { arch: "resnet" input_image_size: "3,8,8" }\n'),
                       subtask="train")
    assert message.endswith("missing required values train_config.train_dataset_path, "
                            "train_config.val_dataset_path, train_config.optimizer, train_config.lr_config, "
                            "train_config.batch_size_per_gpu, train_config.n_epochs")


def test_missing_and_unreadable_files(tmp_path):
    assert error_of(tmp_path / "nope.txt") == f"{tmp_path / 'nope.txt'}: spec file not found"
    assert error_of(tmp_path) == f"{tmp_path}: is a folder, not a spec file"
    binary = tmp_path / "model.tlt"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00")
    assert error_of(binary) == f"{binary}: not a text file (byte 4 is not UTF-8)"


def test_missing_paths_for_dry_run(tmp_path):
    (tmp_path / "train").mkdir()
    text = GOOD.replace("TRAIN", str(tmp_path / "train")).replace("VAL", str(tmp_path / "val"))
    spec = classification.load(write(tmp_path, text))
    assert specs.missing_paths(spec, classification.KINDS["experiment"]) == [
        f"train_config.val_dataset_path: {tmp_path / 'val'} does not exist"]


# -- legacy fields, on a .proto compiled here so the mechanism is tested for any task ---------

LEGACY_PROTO = """\
syntax = "proto3";
package taoctl_test.legacy;
import "taoctl/engine/spec/proto/taoctl_options.proto";
message Inner {
  float dbscan_min_samples = 1 [(taoctl.legacy_float) = true];
  int32 batch_size = 2 [deprecated = true];
  repeated string names = 3;
}
message Experiment {
  string enc_key = 1 [deprecated = true];
  uint32 random_seed = 2;
  repeated Inner inner = 3;
}
"""


@pytest.fixture(scope="module")
def legacy_kind(tmp_path_factory):
    out = tmp_path_factory.mktemp("legacy_proto")
    (out / "legacy_test.proto").write_text(LEGACY_PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{SRC}", f"-I{out}", f"--python_out={out}",
                    str(out / "legacy_test.proto")], check=True)
    sys.path.insert(0, str(out))
    try:
        module = importlib.import_module("legacy_test_pb2")
    finally:
        sys.path.remove(str(out))
    return specs.SpecKind("legacy", message=module.Experiment, required=("inner.names",))


def test_legacy_fields_warn_with_position_and_are_cleared(tmp_path, legacy_kind):
    path = write(tmp_path, 'random_seed: 42\nenc_key: "tlt_encode"\ninner {\n  dbscan_min_samples: 0.05\n'
                           '  batch_size: 4\n  names: "a"\n}\ninner {\n  dbscan_min_samples: 3\n  names: "b"\n}\n')
    warnings: list[str] = []
    spec = specs.load(path, legacy_kind, on_warning=warnings.append)
    assert warnings == [
        f'{path}:2:1: warning: legacy field "enc_key" in Experiment ignored (older TAO releases accepted it; '
        "current TAO does not use it)",
        f'{path}:4:3: warning: legacy value 0.05 of "dbscan_min_samples" in Inner ignored (older TAO releases '
        "took a float; current TAO takes a whole number), the default is used",
        f'{path}:5:3: warning: legacy field "batch_size" in Inner ignored (older TAO releases accepted it; '
        "current TAO does not use it)",
    ]
    assert spec.enc_key == "" and spec.random_seed == 42
    assert spec.inner[0].dbscan_min_samples == 0 and spec.inner[0].batch_size == 0
    assert spec.inner[1].dbscan_min_samples == 3


def test_legacy_value_inside_a_map_entry_is_cleared_in_the_map(tmp_path):
    from taoctl.tasks.detectnet_v2 import spec as detectnet_v2

    path = write(tmp_path, 'model_config { arch: "resnet" num_layers: 18 }\npostprocessing_config {\n  target_class_config {\n'
                           '    key: "car"\n    value { clustering_config { dbscan_min_samples: 0.05 dbscan_eps: 0.2 } }'
                           '\n  }\n}\n')
    warnings: list[str] = []
    spec = detectnet_v2.load(path, on_warning=warnings.append)
    assert warnings == [f'{path}:5:33: warning: legacy value 0.05 of "dbscan_min_samples" in ClusteringConfig ignored '
                        "(older TAO releases took a float; current TAO takes a whole number), the default is used"]
    clustering = spec.postprocessing_config.target_class_config["car"].clustering_config
    assert clustering.dbscan_min_samples == 0 and clustering.dbscan_eps == pytest.approx(0.2)


def test_required_through_repeated_fields_names_the_element(tmp_path, legacy_kind):
    path = write(tmp_path, 'inner { names: "a" }\ninner { }\n')
    with pytest.raises(SpecError, match=r": missing required value inner\[1\]\.names$"):
        specs.load(path, legacy_kind, on_warning=lambda _: None)


def test_legacy_warnings_default_to_stderr(tmp_path, legacy_kind, capsys):
    specs.load(write(tmp_path, 'enc_key: "k"\ninner { names: "a" }\n'), legacy_kind)
    assert 'warning: legacy field "enc_key"' in capsys.readouterr().err


# -- YAML ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Rotation:
    angle: float | list[float] = 0.0
    units: Literal["degrees", "radians"] = "degrees"
    refine_box: bool = False


@dataclasses.dataclass
class SpatialAug:
    rotation: Rotation = dataclasses.field(default_factory=Rotation)
    flip_list: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Data:
    image_dir: str
    ann_path: str | None = None
    output_image_width: int = 960


@dataclasses.dataclass
class AugSpec:
    data: Data
    spatial_aug: SpatialAug = dataclasses.field(default_factory=SpatialAug)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


YAML_KIND = specs.SpecKind("augmentation", schema=AugSpec, paths=("data.image_dir", "data.ann_path"))


def yaml_error(tmp_path, text) -> str:
    path = write(tmp_path, text, "spec.yaml")
    with pytest.raises(SpecError) as info:
        specs.load(path, YAML_KIND)
    return str(info.value).replace(str(path), "spec.yaml")


def test_yaml_loads_with_defaults(tmp_path):
    path = write(tmp_path, "data:\n  image_dir: /images\n  ann_path: null\nspatial_aug:\n  rotation:\n"
                           "    angle: [5, 10]\n  flip_list: [1, 2]\nextra: {a: 1.5, b: 1e-4}\n", "spec.yaml")
    spec = specs.load(path, YAML_KIND)
    assert spec.data == Data(image_dir="/images", ann_path=None, output_image_width=960)
    assert spec.spatial_aug.rotation == Rotation(angle=[5.0, 10.0])
    assert spec.spatial_aug.flip_list == [1, 2] and spec.extra == {"a": 1.5, "b": 1e-4}
    assert specs.missing_paths(spec, YAML_KIND) == ["data.image_dir: /images does not exist"]


@pytest.mark.parametrize("text, expected", [
    ("data:\n  image_dir: x\nspatial_aug:\n  rotaton:\n    angle: 5\n",
     'spec.yaml:4:3: unknown key "rotaton" in spatial_aug (did you mean "rotation"?)'),
    ("data:\n  image_dir: x\nspatial_aug:\n  rotation:\n    angle: abc\n",
     'spec.yaml:5:12: angle expects a number, got "abc"'),
    ("data:\n  image_dir: x\nspatial_aug:\n  rotation:\n    angle: [1, a]\n",
     'spec.yaml:5:16: angle expects a number, got "a"'),
    ("data:\n  image_dir: x\nspatial_aug:\n  rotation:\n    units: degres\n",
     'spec.yaml:5:12: units expects one of degrees, radians, got "degres" (did you mean "degrees"?)'),
    ("data:\n  image_dir: x\n  output_image_width: 1.5\n",
     'spec.yaml:3:23: output_image_width expects an integer, got "1.5"'),
    ("data:\n  image_dir: x\nextra: {a: '1e-4'}\n", 'spec.yaml:3:12: a expects a number, got "1e-4"'),
    ("data:\n  image_dir: [a]\n", "spec.yaml:2:14: image_dir expects a string, got a list"),
    ("data:\n  image_dir: x\nspatial_aug:\n  flip_list: 3\n", 'spec.yaml:4:14: flip_list expects a list, got "3"'),
    ("data:\n  image_dir: x\n  image_dir: y\n", 'spec.yaml:3:3: key "image_dir" set twice in data'),
    ("data:\n  ann_path: x\n", "spec.yaml: missing required value data.image_dir"),
    ("data: [\n", "spec.yaml:2:1: YAML syntax error: "),
    ("- 1\n", "spec.yaml:1:1: expected key: value pairs at the top level, got a list"),
    ("data: 3\n", 'spec.yaml:1:7: data expects a section of key: value pairs, got "3"'),
])
def test_yaml_errors(tmp_path, text, expected):
    message = yaml_error(tmp_path, text)
    assert message.startswith(expected), message


def test_yaml_empty_file_reports_missing_required(tmp_path):
    assert yaml_error(tmp_path, "") == "spec.yaml: missing required value data"


# -- kind detection and `taoctl spec check` ------------------------------------------------


def test_detect_kind_by_top_level_fields(tmp_path, legacy_kind):
    kinds = [classification.KINDS["experiment"], legacy_kind, YAML_KIND]
    assert specs.detect_kind(write(tmp_path, GOOD), kinds).name == "experiment"
    assert specs.detect_kind(write(tmp_path, "random_seed: 1\n", "l.txt"), kinds).name == "legacy"
    assert specs.detect_kind(write(tmp_path, "data: {}\n", "a.yaml"), kinds).name == "augmentation"
    assert specs.detect_kind(write(tmp_path, "model_confg {\n}\n", "t.txt"), kinds).name == "experiment"
    assert specs.detect_kind(write(tmp_path, "unrelated: 1\n", "u.txt"), kinds) is None


def test_spec_check_command(tmp_path, taoctl):
    good = write(tmp_path, GOOD, "good.txt")
    bad = write(tmp_path, 'model_config {\n  n_layrs: 1\n}\n', "bad.txt")
    result = taoctl("spec", "check", "classification", str(good), str(bad))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"OK {good} (experiment)",
        f'{bad}:2:3: unknown field "n_layrs" in model_config (did you mean "n_layers"?)',
        "1 of 2 spec files OK",
    ]
    ok = taoctl("spec", "check", "classification_tf1", str(good), "--subtask", "train")
    assert ok.returncode == 0 and ok.stdout == f"OK {good} (experiment)\n"
    missing = taoctl("spec", "check", "classification", str(good), "--subtask", "evaluate")
    assert missing.returncode == 2
    assert missing.stdout == f"{good}: missing required value eval_config.eval_dataset_path\n"
    assert "unknown task" in taoctl("spec", "check", "clasification", str(good)).stderr
    other = write(tmp_path, "random_seed: 1\nssd_config {\n}\n", "ssd.txt")
    none = taoctl("spec", "check", "classification", str(other))
    assert none.returncode == 2
    assert none.stdout == (f"{other}: its top-level fields (random_seed, ssd_config) match none of the protobuf "
                           "text spec kinds taoctl reads for this task (experiment: eval_config, model_config, "
                           "train_config)\n")
    no_specs = taoctl("spec", "check", "unet", str(good))
    assert no_specs.returncode == 2 and "taoctl does not read unet spec files yet" in no_specs.stderr


def test_spec_check_stays_torch_free(tmp_path):
    code = ("import sys; from taoctl.launcher import cli; rc = cli.main(['spec', 'check', 'classification', "
            f"{str(write(tmp_path, GOOD))!r}]); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_generated_pb2_files_match_their_protos(tmp_path):
    """`make protos` output is committed: regenerating every .proto must not change a byte."""
    protos = sorted(str(p.relative_to(SRC)) for p in SRC.glob("taoctl/**/proto/*.proto"))
    assert "taoctl/tasks/classification/proto/experiment.proto" in protos
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{SRC}", f"--python_out={tmp_path}", *protos],
                   check=True, cwd=SRC)
    stale = [p for p in protos
             if (tmp_path / p.replace(".proto", "_pb2.py")).read_bytes()
             != (SRC / p.replace(".proto", "_pb2.py")).read_bytes()]
    assert not stale, f"run `make protos` and commit: stale _pb2.py for {stale}"


def test_yaml_interpolation_takes_the_referenced_value(tmp_path):
    from taoctl.tasks.text_classification import spec as tc_spec

    path = tmp_path / "train.yaml"
    path.write_text("model:\n  language_model:\n    pretrained_model_name: my/encoder\n")
    loaded = specs.load(path, tc_spec.KINDS["experiment"])
    assert loaded.model.tokenizer.tokenizer_name == "my/encoder"
    path.write_text("model:\n  tokenizer:\n    tokenizer_name: ${model.language_model.nothing}\n")
    with pytest.raises(specs.SpecError, match=r"train.yaml:3:21: model.tokenizer.tokenizer_name: "
                                              r"\$\{model.language_model.nothing\} names no value"):
        specs.load(path, tc_spec.KINDS["experiment"])
