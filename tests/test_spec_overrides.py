"""Command-line overrides on YAML and protobuf-text specs, `???` required values, and the range
rules the task spec kinds declare; all through the real task kinds and spec files on disk."""

from __future__ import annotations

import textwrap

import pytest

from taoctl.engine import spec as specs
from taoctl.errors import SpecError
from taoctl.tasks.augment import spec as augment
from taoctl.tasks.classification import spec as classification
from taoctl.tasks.detectnet_v2 import spec as detectnet_v2

PROTO = """\
model_config {
  arch: "resnet"
  n_layers: 18
  input_image_size: "3,224,224"
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

YAML = """\
data:
  image_dir: /images
  ann_path: ???
  output_image_width: 960
spatial_aug:
  rotation:
    angle: [5, 10]
"""

DETECTNET = """\
dataset_config {
  data_sources { tfrecords_path: "/data/a-*" image_directory_path: "/data/a" }
}
model_config { arch: "resnet" num_layers: 18 }
postprocessing_config {
  target_class_config {
    key: "car"
    value { clustering_config { coverage_threshold: 0.005 dbscan_eps: 0.15 dbscan_min_samples: 20 } }
  }
}
"""


def write(tmp_path, text, name="spec.txt"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error(load, path, *overrides, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        load(path, overrides=overrides, **kwargs)
    message = str(info.value).replace(str(path), "SPEC")
    assert "\n" not in message
    return message


def load_yaml(path, overrides=()):
    return augment.load(path, "augmentation", overrides=overrides)


def load_detectnet(path, overrides=()):
    return detectnet_v2.load(path, overrides=overrides, on_warning=lambda _: None)


# -- parse_overrides ----------------------------------------------------------------------


def test_parse_overrides_keeps_every_form():
    args = ["train_config.n_epochs=3", "+model.x=value", "++a.b=1", "list_key=[a,b]", "a.b[0].c=/x", "a.b=",
            "a=x=y"]
    assert specs.parse_overrides(args) == tuple(args)
    assert specs.parse_override("a.b[0].c=/x").parts == ("a", "b", "0", "c")
    assert specs.parse_override("a.b.0.c=/x").parts == ("a", "b", "0", "c")
    assert specs.parse_override("+a.map[traffic light].c=1").parts == ("a", "map", "traffic light", "c")
    assert specs.parse_override("a=x=y").value == "x=y"


@pytest.mark.parametrize("arg, expected", [
    ("spec.yaml", 'override "spec.yaml": expected key=value (e.g. train_config.n_epochs=10)'),
    ("+++a=1", 'override "+++a=1": expected key=value (e.g. train_config.n_epochs=10)'),
    ("a..b=1", 'override "a..b=1": "a..b" is not a key (names joined by dots, e.g. train_config.n_epochs)'),
    ("=1", 'override "=1": "" is not a key (names joined by dots, e.g. train_config.n_epochs)'),
    ("~a.b", 'override "~a.b": removing a key (~key) is not supported; set it instead (key=value)'),
])
def test_parse_overrides_rejects_malformed(arg, expected):
    with pytest.raises(SpecError) as info:
        specs.parse_overrides(["a=1", arg])
    assert str(info.value) == expected


# -- protobuf text ------------------------------------------------------------------------


def test_proto_overrides_set_add_lists_maps_enums(tmp_path):
    path = write(tmp_path, PROTO)
    spec = classification.load(path, overrides=(
        "train_config.n_epochs=5", "train_config.train_dataset_path=/data/train", "+train_config.n_workers=3",
        "model_config.freeze_blocks=[2,3]", "train_config.image_mean.g=1.5", "train_config.image_mean[r]=100",
        "model_config.resize_interpolation_method=BICUBIC", "train_config.lr_config.step.learning_rate=1e-3",
        "++train_config.batch_size_per_gpu=4", "+train_config.distillation.alpha=0.25",
        "+train_config.distillation.teacher_model_path=/models/teacher.tlt"))
    assert spec.train_config.n_epochs == 5
    assert spec.train_config.train_dataset_path == "/data/train"
    assert spec.train_config.n_workers == 3
    assert list(spec.model_config.freeze_blocks) == [2, 3]
    assert dict(spec.train_config.image_mean) == {"r": 100.0, "g": 1.5}
    assert spec.model_config.resize_interpolation_method == 1
    assert spec.train_config.lr_config.step.learning_rate == pytest.approx(1e-3)
    assert spec.train_config.batch_size_per_gpu == 4
    assert spec.train_config.distillation.alpha == 0.25
    appended = classification.load(path, overrides=("model_config.freeze_blocks[1]=4", "+model_config.freeze_blocks[2]=5"))
    assert list(appended.model_config.freeze_blocks) == [0, 4, 5]


@pytest.mark.parametrize("override, expected", [
    ("train_config.n_epoch=3", 'unknown field "n_epoch" in train_config (did you mean "n_epochs"?)'),
    ("modl_config.arch=x", 'unknown field "modl_config" in the top level (Experiment) (did you mean "model_config"?)'),
    ("train_config.n_epochs=abc", 'n_epochs expects an unsigned integer, got "abc"'),
    ("train_config.n_epochs=-1", 'n_epochs expects an unsigned integer, got "-1"'),
    ("train_config.n_epochs=2.5", 'n_epochs expects an unsigned integer, got "2.5"'),
    ("train_config.n_epochs=99999999999", 'n_epochs expects an unsigned integer, got "99999999999" (out of range)'),
    ("model_config.use_bias=maybe", 'use_bias expects true or false, got "maybe"'),
    ("model_config.resize_interpolation_method=BICUBC",
     'resize_interpolation_method expects one of BILINEAR, BICUBIC, got "BICUBC" (did you mean "BICUBIC"?)'),
    ("model_config.freeze_blocks=3", 'freeze_blocks expects a list (model_config.freeze_blocks=[a,b]), got "3"'),
    ("model_config.freeze_blocks=[1,x]", 'freeze_blocks expects an unsigned integer, got "x"'),
    ("model_config.freeze_blocks[5]=3", "model_config.freeze_blocks has 2 elements, no [5]"),
    ("model_config.freeze_blocks[2]=3", "model_config.freeze_blocks has 2 elements, no [2]; "
                                        "+model_config.freeze_blocks[2]=... adds one"),
    ("model_config.arch=[a]", "arch expects a quoted string (e.g. \"text\"), got a list"),
    ("model_config=3", "model_config is a section: set its fields one by one (model_config.arch=...)"),
    ("model_config.arch.x=3", "model_config.arch is a single value, not a section"),
    ("+train_config.n_epochs=3", "train_config.n_epochs is already set (SPEC:12:3); use train_config.n_epochs=... "
                                 "to change it"),
    ("model_config.n_layers=[1", "value is not valid YAML (expected ',' or ']', but got '<stream end>')"),
])
def test_proto_override_errors_name_the_override(tmp_path, override, expected):
    assert error(classification.load, write(tmp_path, PROTO), override) == f'override "{override}": {expected}'


def test_proto_overrides_through_repeated_messages_and_maps(tmp_path):
    path = write(tmp_path, DETECTNET)
    spec = load_detectnet(path, (
        "dataset_config.data_sources[0].image_directory_path=/other",
        "+dataset_config.data_sources.1.tfrecords_path=/data/b-*",
        "postprocessing_config.target_class_config[car].clustering_config.dbscan_eps=0.3",
        "postprocessing_config.target_class_config.person.clustering_config.dbscan_min_samples=4"))
    sources = spec.dataset_config.data_sources
    assert [(s.tfrecords_path, s.image_directory_path) for s in sources] == [("/data/a-*", "/other"),
                                                                            ("/data/b-*", "")]
    targets = spec.postprocessing_config.target_class_config
    assert targets["car"].clustering_config.dbscan_eps == pytest.approx(0.3)
    assert targets["car"].clustering_config.coverage_threshold == pytest.approx(0.005)
    assert targets["person"].clustering_config.dbscan_min_samples == 4
    for override, expected in [
        ("dataset_config.data_sources.tfrecords_path=/x",
         "dataset_config.data_sources is a list: name an element by its index (dataset_config.data_sources[0]...)"),
        ("dataset_config.data_sources[3].tfrecords_path=/x", "dataset_config.data_sources has 1 element, no [3]"),
        ("postprocessing_config.target_class_config=3", "postprocessing_config.target_class_config is a map: "
         "name an entry by its key (postprocessing_config.target_class_config[KEY]...)"),
        # a field older TAO took as a float takes a whole number, as current TAO does
        ("postprocessing_config.target_class_config[car].clustering_config.dbscan_min_samples=0.5",
         'dbscan_min_samples expects an integer, got "0.5"'),
    ]:
        assert error(load_detectnet, path, override) == f'override "{override}": {expected}'


def test_proto_override_of_a_legacy_field_is_refused(tmp_path):
    path = write(tmp_path, 'inferencer_config { target_classes: "car" }\n')
    override = "inferencer_config.tensorrt_config.calibrator_config.batch_size=4"
    assert error(detectnet_v2.load, path, override, kind="inference") == (
        f'override "{override}": "batch_size" in CalibratorConfig is a legacy field current TAO does not use')


def test_override_fills_a_proto_required_value(tmp_path):
    path = write(tmp_path, 'model_config {\n  input_image_size: "3,224,224"\n  n_layers: 18\n}\n')
    assert error(classification.load, path) == "SPEC: missing required value model_config.arch"
    assert classification.load(path, overrides=("model_config.arch=resnet",)).model_config.arch == "resnet"


# -- YAML ---------------------------------------------------------------------------------


def test_yaml_overrides_set_add_and_lists(tmp_path):
    path = write(tmp_path, YAML, "spec.yaml")
    spec = load_yaml(path, ("data.ann_path=/labels", "data.output_image_width=640", "+data.output_image_height=480",
                            "spatial_aug.rotation.angle=[1,2,3]", "spatial_aug.rotation.angle[1]=7",
                            "+color_aug.hue.hue_rotation_angle=30", "gpu_ids=[0,1]", "data.image_extension=",
                            "++results_dir=/results"))
    assert spec.data.ann_path == "/labels"
    assert (spec.data.output_image_width, spec.data.output_image_height) == (640, 480)
    assert spec.spatial_aug.rotation.angle == [1.0, 7.0, 3.0]
    assert spec.color_aug.hue.hue_rotation_angle == 30.0
    assert spec.gpu_ids == [0, 1] and spec.data.image_extension == "" and spec.results_dir == "/results"


@pytest.mark.parametrize("override, expected", [
    ("data.output_image_widht=3", 'unknown key "output_image_widht" in data (did you mean "output_image_width"?)'),
    ("dta.image_dir=/x", 'unknown key "dta" in the top level (did you mean "data"?)'),
    ("data.output_image_width=abc", 'output_image_width expects an integer, got "abc"'),
    ("spatial_aug.rotation.units=degres", 'units expects one of degrees, radians, got "degres" '
                                          '(did you mean "degrees"?)'),
    ("spatial_aug=3", 'spatial_aug expects a section of key: value pairs, got "3"'),
    ("spatial_aug={rotation: {unit: x}}", 'unknown key "unit" in spatial_aug.rotation (did you mean "units"?)'),
    ("data.image_dir.x=3", "data.image_dir is a single value, not a section"),
    ("spatial_aug.rotation.angle.x=3", "spatial_aug.rotation.angle is a list: name an element by its index "
                                       "(spatial_aug.rotation.angle[0]...)"),
    ("spatial_aug.rotation.angle[5]=1", "spatial_aug.rotation.angle has 2 elements, no [5]"),
    ("+data.output_image_width=10", "data.output_image_width is already set (SPEC:4:23); use "
                                    "data.output_image_width=... to change it"),
])
def test_yaml_override_errors_name_the_override(tmp_path, override, expected):
    path = write(tmp_path, YAML, "spec.yaml")
    assert error(load_yaml, path, "data.ann_path=/labels", override) == f'override "{override}": {expected}'


def test_yaml_missing_value_is_reported_with_its_position_and_filled_by_override(tmp_path):
    path = write(tmp_path, YAML, "spec.yaml")
    assert error(load_yaml, path) == ("SPEC:3:13: missing required value data.ann_path (??? in the spec: set it in "
                                      "the file or as an override data.ann_path=...)")
    assert load_yaml(path, ("data.ann_path=/labels",)).data.ann_path == "/labels"
    listed = write(tmp_path, "data:\n  image_dir: /i\n  ann_path: /l\nspatial_aug:\n  rotation:\n    angle:\n"
                             "      - 1\n      - ???\n", "list.yaml")
    assert error(load_yaml, listed).startswith("SPEC:8:9: missing required value spatial_aug.rotation.angle[1] ")
    assert load_yaml(listed, ("spatial_aug.rotation.angle[1]=2",)).spatial_aug.rotation.angle == [1.0, 2.0]


# -- ranges -------------------------------------------------------------------------------


def test_proto_range_errors_point_at_the_value(tmp_path):
    bad = write(tmp_path, PROTO.replace("batch_size_per_gpu: 8", "batch_size_per_gpu: 0"))
    assert error(classification.load, bad) == "SPEC:11:3: train_config.batch_size_per_gpu must be >= 1, got 0"
    assert classification.load(bad, overrides=("train_config.batch_size_per_gpu=2",)).train_config.batch_size_per_gpu == 2
    assert error(classification.load, write(tmp_path, PROTO), "model_config.dropout=1") == (
        'override "model_config.dropout=1": model_config.dropout must be in [0, 1), got 1')
    nan = write(tmp_path, PROTO.replace("learning_rate: 0.006", "learning_rate: nan"), "nan.txt")
    assert error(classification.load, nan) == ("SPEC:13:22: train_config.lr_config.step.learning_rate must be a "
                                               "finite number > 0, got nan")
    assert error(classification.load, write(tmp_path, PROTO), "train_config.lr_config.step.learning_rate=inf") == (
        'override "train_config.lr_config.step.learning_rate=inf": train_config.lr_config.step.learning_rate must '
        "be a finite number > 0, got inf")


def test_a_required_value_written_as_zero_is_out_of_range_not_missing(tmp_path):
    zero = write(tmp_path, PROTO.replace("n_epochs: 2", "n_epochs: 0"))
    assert error(classification.load, zero, subtask="train") == "SPEC:12:3: train_config.n_epochs must be >= 1, got 0"
    unset = write(tmp_path, PROTO.replace("  n_epochs: 2\n", ""), "unset.txt")
    assert error(classification.load, unset, subtask="train") == "SPEC: missing required value train_config.n_epochs"


def test_proto_range_checks_every_repeated_element_and_map_entry(tmp_path):
    bad = write(tmp_path, PROTO.replace("  n_epochs: 2\n", "  n_epochs: 2\n  model_parallelism: [0.5, 1.5]\n"))
    assert error(classification.load, bad) == "SPEC:13:3: train_config.model_parallelism[1] must be in [0, 1], got 1.5"
    path = write(tmp_path, DETECTNET.replace("dbscan_eps: 0.15", "dbscan_eps: 1.15"), "detectnet.txt")
    assert error(load_detectnet, path) == (
        "SPEC:8:59: postprocessing_config.target_class_config[car].clustering_config.dbscan_eps must be in [0, 1], "
        "got 1.15")
    override = "postprocessing_config.target_class_config.truck.clustering_config.coverage_threshold=2"
    assert error(load_detectnet, write(tmp_path, DETECTNET), override) == (
        f'override "{override}": postprocessing_config.target_class_config[truck].clustering_config.'
        "coverage_threshold must be in [0, 1], got 2")


def test_proto_unset_zero_is_not_range_checked(tmp_path):
    # lr_config.cosine.learning_rate must be > 0, but a file that leaves it unset reads 0: not checked.
    spec = classification.load(write(tmp_path, PROTO.replace("step { learning_rate: 0.006 step_size: 10 gamma: 0.1 }",
                                                             "cosine { min_lr_ratio: 0.1 }")))
    assert spec.train_config.lr_config.cosine.learning_rate == 0
    # switching a oneof by override drops the other member's values from the checks
    switched = classification.load(write(tmp_path, PROTO.replace("lr: 0.01 momentum: 0.9", "momentum: 1.0")),
                                   overrides=("train_config.optimizer.adam.beta_1=0.8",))
    assert switched.train_config.optimizer.WhichOneof("optim") == "adam"


def test_yaml_range_errors(tmp_path):
    path = write(tmp_path, YAML.replace("angle: [5, 10]", "angle: [5, 400]"), "spec.yaml")
    assert error(load_yaml, path, "data.ann_path=/l") == (
        "SPEC:7:16: spatial_aug.rotation.angle[1] must be in [-360, 360], got 400")
    nan = write(tmp_path, YAML.replace("angle: [5, 10]", "angle: .nan"), "nan.yaml")
    assert error(load_yaml, nan, "data.ann_path=/l") == (
        "SPEC:7:12: spatial_aug.rotation.angle must be a finite number in [-360, 360], got nan")
    assert error(load_yaml, write(tmp_path, YAML, "ok.yaml"), "data.ann_path=/l", "data.output_image_width=0") == (
        'override "data.output_image_width=0": data.output_image_width must be >= 1, got 0')


def test_declared_paths_must_name_fields():
    from taoctl.tasks.classification.proto import experiment_pb2

    with pytest.raises(ValueError, match="no field 'train_config.n_epoch'"):
        specs.SpecKind("bad", message=experiment_pb2.Experiment, ranges={"train_config.n_epoch": specs.positive})
    with pytest.raises(ValueError, match="range on model_config.arch, which is not a number"):
        specs.SpecKind("bad", message=experiment_pb2.Experiment, ranges={"model_config.arch": specs.positive})
    with pytest.raises(ValueError, match="AugmentationExperiment has no field 'data.image_directory'"):
        specs.SpecKind("bad", schema=augment.AugmentationExperiment, paths=("data.image_directory",))
    with pytest.raises(ValueError, match="range on data.image_dir, which is not a number"):
        specs.SpecKind("bad", schema=augment.AugmentationExperiment, ranges={"data.image_dir": specs.positive})


def test_range_words():
    assert specs.Range(minimum=0, maximum=1, exclusive_minimum=True).words() == "in (0, 1]"
    assert specs.at_least(1).words() == ">= 1" and specs.positive.words() == "> 0"
    assert specs.Range(maximum=1, exclusive_maximum=True).words() == "< 1"
    assert specs.fraction.allows(1) and not specs.fraction.allows(float("nan"))
    assert not specs.non_negative.allows(float("inf"))


def test_optimizer_lr_and_eval_batch_size_are_range_checked(tmp_path):
    nan = write(tmp_path, PROTO.replace("sgd { lr: 0.01 momentum: 0.9 }", "adam { lr: nan }"), "nan.txt")
    assert error(classification.load, nan) == ("SPEC:10:22: train_config.optimizer.adam.lr must be a finite number "
                                               ">= 0, got nan")
    zero = write(tmp_path, PROTO + "eval_config { batch_size: 0 }\n", "eval.txt")
    assert error(classification.load, zero) == "SPEC:16:15: eval_config.batch_size must be >= 1, got 0"
