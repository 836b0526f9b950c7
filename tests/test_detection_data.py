"""Detection data: TFRecord IO, KITTI label validation, dataset_convert (KITTI, COCO, sample modifier)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from taoctl.engine.data import kitti, samples, tfrecord
from taoctl.errors import TaoctlError

TAO_KEYS = {"frame/id", "frame/width", "frame/height", "target/object_class", "target/truncation",
            "target/occlusion", "target/observation_angle", "target/coordinates_x1", "target/coordinates_y1",
            "target/coordinates_x2", "target/coordinates_y2", "target/world_bbox_h", "target/world_bbox_w",
            "target/world_bbox_l", "target/world_bbox_x", "target/world_bbox_y", "target/world_bbox_z",
            "target/world_bbox_rot_y"}


def test_tfrecord_round_trip_and_checksums(tmp_path):
    assert tfrecord.crc32c.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    path = tmp_path / "x.tfrecord"
    records = [tfrecord.make_example({"a": tfrecord.bytes_feature("hé", b"\x00"), "b": tfrecord.float_feature(1.5),
                                      "c": tfrecord.int64_feature(-3, 2**40), "d": tfrecord.float_feature()})
               for _ in range(3)]
    with tfrecord.TFRecordWriter(path) as writer:
        for r in records:
            writer.write(r)
    assert list(tfrecord.read_records(path)) == records
    parsed = tfrecord.parse_example(records[0])
    assert parsed == {"a": ["hé".encode(), b"\x00"], "b": [1.5], "c": [-3, 2**40], "d": []}
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TaoctlError, match="data checksum"):
        list(tfrecord.read_records(path))
    path.write_bytes(bytes(data[:30]))
    with pytest.raises(TaoctlError, match="truncated"):
        list(tfrecord.read_records(path))
    # A failed write leaves no file behind.
    with pytest.raises(RuntimeError):
        with tfrecord.TFRecordWriter(tmp_path / "y.tfrecord") as writer:
            writer.write(b"x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tfrecord"]


LINE = "{} 0.00 0 0.00 {} 0.00 0.00 0.00 0.00 0.00 0.00 0.00"


@pytest.fixture
def defective(tmp_path):
    """A KITTI folder with one of each defect, and the spec that converts it."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, size in (("a", (100, 80)), ("b", (100, 80)), ("c", (100, 80)), ("d", (120, 80))):
        Image.new("RGB", size, (50, 60, 70)).save(root / "images" / f"{stem}.png")
    (root / "images" / "broken.png").write_bytes(b"not an image")
    (root / "labels" / "broken.txt").write_text(LINE.format("car", "1 1 5 5") + "\n")
    (root / "labels" / "a.txt").write_text("\n".join([
        LINE.format("car", "10 10 50 50"),        # 1 fine
        "car 0.00 0 0.00 10 10 50",               # 2 field count
        LINE.format("car", "10 ten 50 50"),       # 3 non-numeric
        LINE.format("car", "50 10 10 50"),        # 4 inverted
        LINE.format("car", "10 10 10 50"),        # 5 zero area
        LINE.format("car", "80 60 130 90"),       # 6 outside -> clipped
        LINE.format("car", "200 200 230 230"),    # 7 entirely outside
        LINE.format("truck", "20 20 40 40"),      # 8 not in the class mapping
    ]) + "\n")
    (root / "labels" / "b.txt").write_text(LINE.format("Pedestrian", "5 5 30 60") + "\n")
    (root / "labels" / "d.txt").write_text(LINE.format("car", "5 5 30 60") + "\n")
    (root / "labels" / "orphan.txt").write_text(LINE.format("car", "5 5 30 60") + "\n")
    # c.png has no label file.
    spec = tmp_path / "spec.txt"
    spec.write_text(f'kitti_config {{ root_directory_path: "{root}" image_dir_name: "images" '
                    f'label_dir_name: "labels" image_extension: ".png" partition_mode: "random" '
                    f'num_partitions: 2 val_split: 25 num_shards: 2 }}\n'
                    f'image_directory_path: "{root}"\n'
                    f'target_class_mapping {{ key: "car" value: "car" }}\n'
                    f'target_class_mapping {{ key: "pedestrian" value: "person" }}\n')
    return root, spec


def test_each_defect_is_reported_with_its_line(defective):
    root, _ = defective
    frames, report = kitti.read_kitti(root / "images", root / "labels", ".png",
                                      class_mapping={"car": "car", "pedestrian": "person"}, lower=True,
                                      require_one_size=True)
    a = root / "labels" / "a.txt"
    issues = report.issues
    assert issues["field_count"] == [f"{a}:2: 7 fields, expected 15"]
    assert issues["non_numeric"] == [f"{a}:3: 'ten'"]
    assert issues["inverted_box"][0].startswith(f"{a}:4:")
    assert issues["zero_area"][0].startswith(f"{a}:5:")
    assert issues["outside_image"][0].startswith(f"{a}:6:") and "clipped to 100x80" in issues["outside_image"][0]
    assert issues["outside_image_dropped"][0].startswith(f"{a}:7:")
    assert issues["unknown_class"] == [f"{a}:8: 'truck'"]
    assert issues["missing_image"][0].startswith(str(root / "labels" / "orphan.txt"))
    assert issues["missing_label"][0].startswith(str(root / "images" / "c.png"))
    assert issues["unreadable_image"][0].startswith(str(root / "images" / "broken.png"))
    assert issues["mixed_resolution"][0].startswith(str(root / "images" / "d.png")) and "120x80" in issues["mixed_resolution"][0]
    assert [f.frame_id for f in frames] == ["a", "b"]  # d dropped: one size required
    frame_a = frames[0]
    assert frame_a.classes == ["car", "car", "truck"]
    assert frame_a.objects[1].box == (80.0, 60.0, 100.0, 80.0)
    assert report.class_counts == {"car": 3, "truck": 1, "pedestrian": 1}
    summary = report.summary()
    for kind in kitti.ISSUE_KINDS:
        assert f"[{kind}]" in summary


def test_dataset_convert_strict_fails_and_writes_nothing(defective, tmp_path, taoctl):
    _, spec = defective
    out = tmp_path / "tf" / "data"
    done = taoctl("detectnet_v2", "dataset_convert", "-d", str(spec), "-o", str(out), "--strict")
    assert done.returncode == 2
    assert "--strict: label problems found" in done.stderr and "a.txt:3" in done.stdout
    assert not list(out.parent.glob("data-*"))
    report = json.loads((out.parent / "validation_report.json").read_text())
    assert report["issue_counts"]["field_count"] == 1 and report["issue_counts"]["unreadable_image"] == 1
    # Without --strict the usable objects are converted, the problems still listed.
    done = taoctl("ssd", "dataset_convert", "-d", str(spec), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.parent.glob("data-*")) == [
        f"data-fold-{f:03d}-of-002-shard-{s:05d}-of-00002" for f in (0, 1) for s in (0, 1)]
    frames = kitti.read_tfrecords(str(out) + "*", defective[0], ".png")
    assert sorted(f.frame_id for f in frames) == ["images/a", "images/b", "images/d"]


@pytest.fixture(scope="module")
def sample_kitti(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    samples.generate(root, seed=0)
    return root / "kitti"


def _spec(tmp_path, root, body):
    spec = tmp_path / "convert.txt"
    spec.write_text(f'kitti_config {{ root_directory_path: "{root}" image_dir_name: "images" '
                    f'label_dir_name: "labels" image_extension: ".png" {body} }}\n'
                    f'image_directory_path: "{root}"\n')
    return spec


def test_convert_round_trip_random_split(sample_kitti, tmp_path, taoctl):
    spec = _spec(tmp_path, sample_kitti, 'partition_mode: "random" num_partitions: 2 val_split: 20 num_shards: 4')
    out = tmp_path / "tf" / "kitti"
    done = taoctl("yolo_v4", "dataset_convert", "-d", str(spec), "-o", str(out), "-r", str(tmp_path / "res"))
    assert done.returncode == 0, done.stderr
    assert "Fold 0: 40 frames" in done.stdout and "Fold 1: 160 frames" in done.stdout
    assert "Cumulative object statistics" in done.stdout
    shards = sorted(out.parent.glob("kitti-fold-*"))
    assert len(shards) == 8 and shards[0].name == "kitti-fold-000-of-002-shard-00000-of-00004"
    truth, _ = kitti.read_kitti(sample_kitti / "images", sample_kitti / "labels", ".png", frame_prefix="images")
    by_id = {f.frame_id: f for f in truth}
    val = kitti.read_tfrecords(str(out) + "-fold-000*", sample_kitti, ".png")
    train = kitti.read_tfrecords(str(out) + "-fold-001*", sample_kitti, ".png")
    # TAO's random split: the first val_split % of the sorted stems are validation.
    assert sorted(f.frame_id for f in val) == sorted(by_id)[:40]
    assert len(train) == 160
    for frame in val + train:
        expected = by_id[frame.frame_id]
        assert frame.classes == expected.classes
        np.testing.assert_array_equal(frame.boxes, expected.boxes)
        assert (frame.width, frame.height) == samples.KITTI_SIZE and Path(frame.image_path).is_file()
    record = next(tfrecord.read_records(shards[0]))
    assert set(tfrecord.parse_example(record)) == TAO_KEYS
    report = json.loads((tmp_path / "res" / "validation_report.json").read_text())
    assert report["issue_counts"] == {} and [f["frames"] for f in report["folds"]] == [40, 160]
    # Same input, same shards byte for byte (TAO's seeded shuffles).
    again = tmp_path / "tf2" / "kitti"
    assert taoctl("yolo_v4", "dataset_convert", "-d", str(spec), "-o", str(again)).returncode == 0
    assert shards[3].read_bytes() == (again.parent / shards[3].name).read_bytes()


def test_convert_sequence_mode_and_sample_modifier(sample_kitti, tmp_path, taoctl):
    stems = sorted(p.stem for p in (sample_kitti / "images").glob("*.png"))
    seq_file = tmp_path / "seq.json"
    seq_file.write_text(json.dumps({"s0": stems[:100], "s1": stems[100:160], "s2": stems[160:]}))
    spec = _spec(tmp_path, sample_kitti,
                 f'partition_mode: "sequence" num_partitions: 2 num_shards: 0 kitti_sequence_to_frames_file: "{seq_file}"')
    spec.write_text(spec.read_text() + 'sample_modifier_config {\n'
                    '  filter_samples_containing_only: "square"\n'
                    '  dominant_target_classes: "circle"\n  num_duplicates: 2\n'
                    '  source_to_target_class_mapping { key: "circle" value: "circle" }\n'
                    '  source_to_target_class_mapping { key: "square" value: "square" }\n'
                    '  source_to_target_class_mapping { key: "triangle" value: "triangle" }\n}\n')
    out = tmp_path / "tf" / "seq"
    done = taoctl("detectnet_v2", "dataset_convert", "-d", str(spec), "-o", str(out), "-f", "0")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.parent.glob("seq-*"))
    assert names == ["seq-fold-000-of-002", "seq-fold-001-of-002"]
    # Sequences by size round-robin (s0 -> 0, s1 -> 1, s2 -> 0), then reversed as TAO does.
    fold0 = kitti.read_tfrecords(out.parent / names[0], sample_kitti, ".png")
    fold1 = kitti.read_tfrecords(out.parent / names[1], sample_kitti, ".png")
    assert sorted(f.frame_id.split("/")[1] for f in fold0) == stems[100:160]  # validation: untouched
    truth, _ = kitti.read_kitti(sample_kitti / "images", sample_kitti / "labels", ".png")
    expected = []
    for frame in (f for f in truth if f.frame_id not in stems[100:160]):
        classes = set(frame.classes)
        if classes == {"square"}:
            continue
        counts = {c: frame.classes.count(c) for c in classes}
        rare = [c for c in classes if c != "circle"]
        duplicate = any(counts[r] > counts.get("circle", 0) for r in rare)
        expected += [frame.frame_id] * (3 if duplicate else 1)
    assert sorted(f.frame_id.split("/")[1] for f in fold1) == sorted(expected)
    assert len(fold1) > 140


def test_convert_coco(tmp_path, taoctl):
    root = tmp_path / "coco"
    (root / "imgs").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 48)).save(root / "imgs" / f"im{i}.jpg")
    ann = {"images": [{"id": i, "file_name": f"im{i}.jpg", "width": 64, "height": 48} for i in range(3)],
           "categories": [{"id": 1, "name": "Traffic Light"}, {"id": 2, "name": "car"}],
           "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 2, 10, 20]},
                           {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 40, 10, 10]},
                           {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 10]}]}
    (root / "ann.json").write_text(json.dumps(ann))
    spec = tmp_path / "coco.txt"
    spec.write_text(f'coco_config {{ root_directory_path: "{root}" img_dir_names: ["imgs"] '
                    f'annotation_files: ["ann.json"] num_partitions: 1 num_shards: [2] }}\n')
    out = tmp_path / "tf" / "coco"
    done = taoctl("retinanet", "dataset_convert", "-d", str(spec), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "annotation id 2: box 60 40 70 50 clipped to 64x48" in done.stdout
    assert "annotation id 3" in done.stdout and "[zero_area]" in done.stdout
    frames = {f.frame_id: f for f in kitti.read_tfrecords(str(out) + "*", root, ".jpg")}
    assert frames["imgs/im0"].classes == ["trafficlight"]
    assert frames["imgs/im0"].objects[0].box == (1.0, 2.0, 11.0, 22.0)
    assert frames["imgs/im1"].objects[0].box == (60.0, 40.0, 64.0, 48.0)
    assert frames["imgs/im2"].objects == []


def test_spec_errors_are_one_line(tmp_path, taoctl):
    spec = tmp_path / "bad.txt"
    spec.write_text('kitti_config {\n  root_directory_path: "/x"\n  val_splt: 20\n}\n')
    done = taoctl("yolo_v3", "dataset_convert", "-d", str(spec), "-o", str(tmp_path / "o"))
    assert done.returncode == 2 and f"{spec}:3:3" in done.stderr and "val_split" in done.stderr
    assert "Traceback" not in done.stderr
    good = tmp_path / "good.txt"
    good.write_text('kitti_config { root_directory_path: "/nonexistent/kitti" }\n')
    done = taoctl("yolo_v3", "dataset_convert", "-d", str(good), "-o", str(tmp_path / "o"), "--dry-run")
    assert done.returncode == 2 and "/nonexistent/kitti does not exist" in done.stderr


@pytest.mark.slow
def test_bccd_converts_and_round_trips(tmp_path, taoctl):
    root = Path("/work/shared/data/bccd_kitti")
    if not root.is_dir():
        pytest.skip("bccd_kitti not available")
    spec = tmp_path / "bccd.txt"
    spec.write_text(f'kitti_config {{ root_directory_path: "{root}" image_dir_name: "images" label_dir_name: "labels" '
                    f'image_extension: ".jpg" partition_mode: "random" num_partitions: 2 val_split: 20 num_shards: 10 }}\n'
                    f'image_directory_path: "{root}"\n')
    out = tmp_path / "tf" / "bccd"
    done = taoctl("detectnet_v2", "dataset_convert", "-d", str(spec), "-o", str(out), "--strict")
    assert done.returncode == 0, done.stderr
    truth, _ = kitti.read_kitti(root / "images", root / "labels", ".jpg", lower=True, frame_prefix="images")
    by_id = {f.frame_id: f for f in truth}
    frames = kitti.read_tfrecords(str(out) + "*", root, ".jpg")
    assert len(frames) == len(truth) == 364 and sum(len(f.objects) for f in frames) == 4886
    for frame in frames:
        assert frame.classes == by_id[frame.frame_id].classes
        np.testing.assert_array_equal(frame.boxes, by_id[frame.frame_id].boxes)


def test_data_source_from_tfrecords_or_kitti_agree(sample_kitti, tmp_path, taoctl):
    spec = _spec(tmp_path, sample_kitti, 'partition_mode: "random" num_partitions: 2 val_split: 0 num_shards: 2')
    out = tmp_path / "tf" / "all"
    assert taoctl("yolo_v3", "dataset_convert", "-d", str(spec), "-o", str(out)).returncode == 0
    from_records, r1 = kitti.load_data_source(sample_kitti, tfrecords_path=str(out) + "*", extension=".png",
                                              class_mapping={"circle": "circle", "square": "square"})
    from_labels, r2 = kitti.load_data_source(sample_kitti / "images", label_directory_path=sample_kitti / "labels")
    assert len(from_records) == len(from_labels) == samples.KITTI_IMAGES
    assert r1.class_counts == r2.class_counts and r1.objects == r2.objects
    assert r1.counts() == {"unknown_class": r1.class_counts["triangle"]} and r2.clean
    by_image = {Path(f.image_path).name: f for f in from_labels}
    for frame in from_records:
        np.testing.assert_array_equal(frame.boxes, by_image[Path(frame.image_path).name].boxes)
    with pytest.raises(TaoctlError, match="matches no file"):
        kitti.load_data_source(sample_kitti, tfrecords_path=str(tmp_path / "nothing*"))
