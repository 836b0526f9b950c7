"""Crafted or damaged inputs are refused with one line naming them, never obeyed (issue 16).

Model files (lying manifests, non-JSON manifests, non-safetensors weights, truncated encrypted
files, missing members, zip bombs, wrong-dtype weights), spec and label files of unbounded size,
defective COCO annotations, non-finite numbers in results.json and system folders as mount
destinations. Every file here is a real one, crafted with zipfile or modelfile's own writer.
"""

import json
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from taoctl.engine import modelfile
from taoctl.engine import spec as spec_loader
from taoctl.engine.data import kitti
from taoctl.engine.metrics.detection import ClassResult, DetectionResult
from taoctl.errors import SpecError, TaoctlError
from taoctl.launcher import mounts
from taoctl.tasks.classification import common as classification_common
from taoctl.tasks.detection_common import convert
from taoctl.tasks.detection_common import spec as detection_spec


def small_net():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 2))


def saved(path, key=None):
    modelfile.save_model(path, small_net(), {"task": "classification", "class_map": {"a": 0, "b": 1}}, key=key)
    return path


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rewrite(path, manifest_changes=None, **replaced: bytes):
    """Rewrite a plain model file with manifest fields changed and members replaced (bytes) or dropped (None)."""
    content = members(path)
    manifest = json.loads(content[modelfile.MANIFEST])
    manifest.update(manifest_changes or {})
    content[modelfile.MANIFEST] = json.dumps(manifest).encode()
    for name, data in replaced.items():
        name = {"manifest": modelfile.MANIFEST, "weights": modelfile.WEIGHTS}[name]
        if data is None:
            del content[name]
        else:
            content[name] = data
    modelfile.write_archive(path, content)
    return path


def load_into_net(path, key=None):
    return modelfile.load_weights_into(small_net(), modelfile.load_model(path, key))


# --------------------------------------------------------------------------- model files
def test_a_manifest_whose_layer_shapes_lie_about_the_weights_is_corrupt(tmp_path):
    path = saved(tmp_path / "m.tlt")
    layers = json.loads(members(path)[modelfile.MANIFEST])["layers"]
    layers["0"]["out_channels"] = 8  # the weights hold 16 filters
    rewrite(path, {"layers": layers})
    with pytest.raises(TaoctlError, match=r"corrupt model file .*m\.tlt: the manifest gives layer '0' a weight of "
                                          r"shape \[8, 3, 3, 3\] but the weights hold \[16, 3, 3, 3\]"):
        load_into_net(path)


def test_a_manifest_claiming_absurd_widths_is_refused_before_allocating(tmp_path):
    path = saved(tmp_path / "m.tlt")
    layers = json.loads(members(path)[modelfile.MANIFEST])["layers"]
    layers["0"]["out_channels"] = 10**12  # 27e12 floats if it were built
    layers["1"] = {"type": "Pickle", "num_features": 3}
    rewrite(path, {"layers": {"0": layers["0"]}})
    with pytest.raises(TaoctlError, match=r"corrupt model file .*: the manifest gives layer '0' a weight of shape "
                                          r"\[1000000000000, 3, 3, 3\]"):
        load_into_net(path)
    rewrite(path, {"layers": {"1": layers["1"]}})
    with pytest.raises(TaoctlError, match=r"corrupt model file .*: layer '1' in the manifest is not one of"):
        load_into_net(path)


def test_a_manifest_that_is_not_json_is_corrupt(tmp_path):
    path = rewrite(saved(tmp_path / "m.tlt"), manifest=b'{"format": "taoctl-model", "layers": [')
    with pytest.raises(TaoctlError, match=r"corrupt model file .*m\.tlt: manifest\.json is not JSON"):
        modelfile.load_model(path)
    path = rewrite(saved(tmp_path / "bytes.tlt"), manifest=b"\xff\xfe not text")
    with pytest.raises(TaoctlError, match=r"corrupt model file .*: manifest\.json is not JSON"):
        modelfile.load_model(path)
    path = rewrite(saved(tmp_path / "list.tlt"), manifest=b"[1, 2]")
    with pytest.raises(TaoctlError, match=r"corrupt model file .*: manifest\.json is not a JSON object"):
        modelfile.load_model(path)


def test_weights_that_are_not_safetensors_are_corrupt(tmp_path):
    pickled = b"\x80\x04\x95pickle that must never be loaded"
    path = rewrite(saved(tmp_path / "m.tlt"), {"weights_bytes": len(pickled)}, weights=pickled)
    with pytest.raises(TaoctlError, match=r"corrupt model file .*m\.tlt: weights\.safetensors is not safetensors"):
        modelfile.load_model(path)


def test_weights_of_another_size_than_the_manifest_says_are_refused_unread(tmp_path):
    path = saved(tmp_path / "m.tlt")
    size = len(members(path)[modelfile.WEIGHTS])
    rewrite(path, {"weights_bytes": size - 1})
    with pytest.raises(TaoctlError, match=rf"corrupt model file .*: weights\.safetensors holds {size} bytes but the "
                                          rf"manifest says {size - 1}"):
        modelfile.load_model(path)


def test_a_truncated_encrypted_file_is_corrupt_not_a_wrong_key(tmp_path):
    path = saved(tmp_path / "m.tlt", key="nvidia_tlt")
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(TaoctlError, match=r"corrupt model file .*m\.tlt: truncated or damaged \(the key is right"):
        modelfile.load_model(path, "nvidia_tlt")
    with pytest.raises(TaoctlError, match=r"cannot decrypt .*m\.tlt: wrong key$"):
        modelfile.load_model(path, "another key")
    path.write_bytes(whole[:len(modelfile.MAGIC) + 20])
    with pytest.raises(TaoctlError, match=r"corrupt model file .*: truncated \(32 bytes, shorter than the encryption"):
        modelfile.load_model(path, "nvidia_tlt")


def test_a_damaged_encrypted_file_is_corrupt(tmp_path):
    path = saved(tmp_path / "m.tlt", key="k")
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(TaoctlError, match=r"corrupt model file .*: truncated or damaged"):
        modelfile.load_model(path, "k")


def test_missing_members_and_a_truncated_zip_are_corrupt(tmp_path):
    path = rewrite(saved(tmp_path / "m.tlt"), weights=None)
    with pytest.raises(TaoctlError, match=r"corrupt model file .*m\.tlt: weights\.safetensors is missing"):
        modelfile.load_model(path)
    whole = saved(tmp_path / "t.tlt").read_bytes()
    (tmp_path / "t.tlt").write_bytes(whole[:len(whole) - 40])
    with pytest.raises(TaoctlError, match=r"corrupt model file .*t\.tlt: not a complete zip archive"):
        modelfile.load_model(tmp_path / "t.tlt")


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    path = saved(tmp_path / "m.tlt")
    content = members(path)
    manifest = json.loads(content[modelfile.MANIFEST])
    del manifest["weights_bytes"]  # no size to compare with: the inflation bound alone must stop it
    inflated = 256 * 2**20
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(modelfile.MANIFEST, json.dumps(manifest))
        with archive.open(modelfile.WEIGHTS, "w") as member:
            zeros = bytes(2**20)
            for _ in range(inflated // len(zeros)):
                member.write(zeros)
    assert path.stat().st_size < 2**20  # a small file ...
    with pytest.raises(TaoctlError, match=rf"corrupt model file .*m\.tlt: weights\.safetensors would inflate from "
                                          rf"\d+ to {inflated} bytes \(more than 100x: a zip bomb\)"):
        modelfile.load_model(path)


def test_a_deflated_model_file_within_bounds_still_loads(tmp_path):
    """Re-zipped by another tool (compressed members): not a bomb, so it loads as before."""
    path = saved(tmp_path / "m.tlt")
    content = members(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    assert load_into_net(path)[0].out_channels == 16


def test_float64_weights_are_cast_with_one_notice_and_integer_weights_refused(tmp_path, capsys):
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import save as save_safetensors

    path = saved(tmp_path / "m.tlt")
    state = load_safetensors(members(path)[modelfile.WEIGHTS])
    doubles = {k: (v.double() if v.is_floating_point() else v) for k, v in state.items()}
    data = save_safetensors(doubles)
    rewrite(path, {"weights_bytes": len(data)}, weights=data)
    net = load_into_net(path)
    assert net[0].weight.dtype == torch.float32
    assert torch.equal(net[0].weight, state["0.weight"])
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Notice:")]
    assert len(notices) == 1 and "torch.float64 -> torch.float32" in notices[0] and "m.tlt" in notices[0]

    integers = dict(state, **{"0.weight": torch.ones_like(state["0.weight"], dtype=torch.int32)})
    data = save_safetensors(integers)
    rewrite(path, {"weights_bytes": len(data)}, weights=data)
    with pytest.raises(TaoctlError, match=r"corrupt model file .*: tensor 0\.weight is torch\.int32 where the model "
                                          r"holds torch\.float32"):
        load_into_net(path)


def test_a_crafted_model_file_is_one_line_and_exit_2_on_the_command_line(tmp_path, taoctl):
    path = rewrite(saved(tmp_path / "m.tlt"), manifest=b"not json")
    done = taoctl("classification", "prune", "-m", path, "-o", tmp_path / "p.tlt")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"taoctl: corrupt model file {path}: manifest.json")
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "p.tlt").exists()


# --------------------------------------------------------------------------- size bounds
def test_a_spec_of_unbounded_size_is_refused_without_reading_it_all(tmp_path):
    huge = tmp_path / "spec.txt"
    with huge.open("wb") as handle:  # sparse: 16 MiB and one byte of zeros on disk in no time
        handle.truncate(spec_loader.MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError, match=r"spec\.txt: larger than 16 MiB, not a spec file"):
        spec_loader.read_text(huge)
    with pytest.raises(SpecError, match=r"^/dev/zero: larger than 16 MiB"):
        spec_loader.read_text("/dev/zero")


def test_spec_check_of_dev_zero_is_one_line(taoctl):
    done = taoctl("spec", "check", "classification", "/dev/zero", timeout=120)
    assert done.returncode == 2
    assert "/dev/zero: larger than 16 MiB, not a spec file" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_label_file_of_unbounded_size_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")
    label = tmp_path / "labels" / "a.txt"
    with label.open("wb") as handle:
        handle.truncate(kitti.MAX_LABEL_BYTES + 1)
    with pytest.raises(TaoctlError, match=r"labels/a\.txt: label file larger than 16 MiB"):
        kitti.read_kitti(tmp_path / "images", tmp_path / "labels", ".png")
    label.unlink()
    label.symlink_to("/dev/zero")
    with pytest.raises(TaoctlError, match=r"labels/a\.txt: label file larger than 16 MiB"):
        kitti.read_kitti(tmp_path / "images", tmp_path / "labels", ".png")


# --------------------------------------------------------------------------- COCO defects
@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    (root / "imgs").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 48)).save(root / "imgs" / f"im{i}.jpg")
    ann = {"images": [{"id": 0, "file_name": "im0.jpg", "width": 64, "height": 48},
                      {"id": 1, "file_name": "im1.jpg", "width": 64, "height": 48},
                      {"id": 2, "file_name": "im2.jpg"}],
           "categories": [{"id": 1, "name": "car"}],
           "annotations": [{"id": 10, "image_id": 0, "category_id": 1, "bbox": [1, 2, 10, 20]},
                           {"id": 11, "image_id": 0, "category_id": 1},
                           {"id": 12, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},
                           {"image_id": 1, "category_id": 1, "bbox": ["1", 1, 5, None]},
                           {"id": 14, "image_id": 1, "category_id": 1, "bbox": [3, 3, 5, 5]}]}
    (root / "ann.json").write_text(json.dumps(ann))
    spec = tmp_path / "coco.txt"
    spec.write_text(f'coco_config {{ root_directory_path: "{root}" img_dir_names: ["imgs"] '
                    f'annotation_files: ["ann.json"] num_partitions: 1 num_shards: [1] }}\n')
    return spec


def test_coco_annotations_without_bbox_or_with_unknown_image_are_reported_by_index(coco, tmp_path):
    lines = []
    result = convert.convert(detection_spec.load(coco), str(tmp_path / "tf" / "out"), echo=lines.append)
    ann = coco.parent / "coco" / "ann.json"
    issues = result["issues"]
    assert issues["field_count"] == [f"{ann}:images[2]: no \"width\", \"height\"",
                                     f"{ann}:annotations[1], annotation id 11: no \"bbox\""]
    unknown_image = f"{ann}:annotations[2], annotation id 12: image_id 99 names no entry of \"images\""
    assert issues["missing_image"] == [unknown_image]
    assert issues["non_numeric"] == [f"{ann}:annotations[3]: \"bbox\" [\"1\", 1, 5, null] is not 4 finite numbers"]
    assert result["objects"] == 2  # the two good annotations are converted
    assert "2 x line without 15 fields (16 for detections), or COCO entry without a field" in "\n".join(lines)


def test_coco_defects_fail_dataset_convert_strict_with_exit_2(coco, tmp_path, taoctl):
    out = tmp_path / "tf" / "out"
    done = taoctl("detectnet_v2", "dataset_convert", "-d", coco, "-o", out, "--strict")
    assert done.returncode == 2
    assert "--strict: label problems found (missing_image: 1, field_count: 2, non_numeric: 1)" in done.stderr
    assert "annotations[1], annotation id 11: no \"bbox\"" in done.stdout
    assert not list((tmp_path / "tf").glob("out*"))


# --------------------------------------------------------------------------- results.json
def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds the non-JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_classification_results_json_writes_null_for_non_finite_numbers(tmp_path):
    path = tmp_path / "results.json"
    classification_common.write_json(path, {"accuracy": math.nan, "per_class": [1.0, math.inf, -math.inf],
                                            "loss": {"value": np.float64("nan")}, "n": 3})
    assert _strict_json(path) == {"accuracy": None, "per_class": [1.0, None, None], "loss": {"value": None}, "n": 3}


def test_detection_results_json_writes_null_for_non_finite_numbers(tmp_path):
    curve = np.zeros(1)
    diverged = ClassResult("car", math.nan, 3, 5, curve, curve, curve, math.nan, 0.5)
    DetectionResult([diverged], "SAMPLE", 0.5).write_json(tmp_path / "results.json")
    results = _strict_json(tmp_path / "results.json")
    assert results["AP_car"] is None and results["mAP"] is None and results["precision_car"] is None
    assert results["recall_car"] == 0.5


# --------------------------------------------------------------------------- mounts file
@pytest.mark.parametrize("destination", ["/", "/usr", "/usr/", "//usr", "/etc", "/usr/local", "/proc",
                                         "/proc/sys", "/dev/shm", "/sys/fs"])
def test_a_mount_over_a_system_folder_is_refused(tmp_path, destination):
    data = {"Mounts": [{"source": str(tmp_path), "destination": destination}]}
    with pytest.raises(TaoctlError, match=r"m\.json: Mounts\[0\]: destination \"/.*\" would hide the container's "
                                          r"own system folder"):
        mounts.parse(data, str(tmp_path / "m.json"))


def test_a_mount_beside_the_system_folders_is_accepted(tmp_path):
    data = {"Mounts": [{"source": str(tmp_path), "destination": "/usr/share/datasets"},
                       {"source": str(tmp_path), "destination": "/workspace"}]}
    assert [m.destination for m in mounts.parse(data, "m.json").mounts] == ["/usr/share/datasets", "/workspace"]


def test_mounts_flag_naming_a_directory_says_so(tmp_path, monkeypatch):
    with pytest.raises(TaoctlError, match=rf"mounts file {tmp_path} \(from --mounts\) is a directory, not a JSON file"):
        mounts.find_file(str(tmp_path))
    monkeypatch.setenv(mounts.ENV_VAR, str(tmp_path))
    with pytest.raises(TaoctlError, match=r"\(from \$LAUNCHER_MOUNTS\) is a directory"):
        mounts.find_file()
