"""detectnet_v2 data: spec -> frames from real TFRecord shards, augmented samples, eval and inference images."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from taoctl.engine.data import kitti
from taoctl.engine.data.tfrecord import TFRecordWriter
from taoctl.engine.detection import images as det_images
from taoctl.errors import TaoctlError
from taoctl.tasks.detection_common.convert import example_bytes, shard_path
from taoctl.tasks.detectnet_v2 import data, spec as dn_spec

# Each image 128 x 96 (twice the 64 x 48 output) with one white car and one grey van on black.
CAR = (16.0, 20.0, 48.0, 52.0)
VAN = (80.0, 40.0, 120.0, 88.0)


def _write_dataset(root, frames_per_fold=(3, 5)):
    images = root / "images"
    images.mkdir()
    stems_by_fold = []
    index = 0
    for fold, count in enumerate(frames_per_fold):
        frames = []
        for _ in range(count):
            stem = f"img{index:03d}"
            index += 1
            pixels = np.zeros((96, 128, 3), dtype=np.uint8)
            x1, y1, x2, y2 = (int(v) for v in CAR)
            pixels[y1:y2, x1:x2] = 255
            x1, y1, x2, y2 = (int(v) for v in VAN)
            pixels[y1:y2, x1:x2] = 128
            Image.fromarray(pixels).save(images / f"{stem}.png")
            objects = [kitti.KittiObject("car", CAR), kitti.KittiObject("van", VAN),
                       kitti.KittiObject("person_sitting", (0.0, 0.0, 4.0, 4.0))]
            frames.append(kitti.Frame(stem, str(images / f"{stem}.png"), 128, 96, objects))
        path = shard_path(str(root / "tfrecords" / "data"), fold, len(frames_per_fold), 0, 1)
        (root / "tfrecords").mkdir(exist_ok=True)
        with TFRecordWriter(path) as writer:
            for frame in frames:
                writer.write(example_bytes(frame))
        stems_by_fold.append([f.frame_id for f in frames])
    return stems_by_fold


def _spec_text(root, split="validation_fold: 0", classes=("car", "truck"), augmentation=""):
    targets = "".join(f"""
  target_classes {{ name: "{c}" class_weight: 1.0 coverage_foreground_weight: 0.5
    objectives {{ name: "cov" initial_weight: 1.0 weight_target: 1.0 }}
    objectives {{ name: "bbox" initial_weight: 1.0 weight_target: 1.0 }} }}""" for c in classes)
    return f"""
dataset_config {{
  data_sources {{ tfrecords_path: "{root}/tfrecords/data-fold-*" image_directory_path: "{root}/images" }}
  image_extension: "png"
  target_class_mapping {{ key: "car" value: "car" }}
  target_class_mapping {{ key: "van" value: "truck" }}
  {split}
}}
augmentation_config {{
  preprocessing {{ output_image_width: 64 output_image_height: 48 min_bbox_width: 1.0 min_bbox_height: 1.0 }}
  {augmentation}
}}
cost_function_config {{ {targets} }}
model_config {{ arch: "resnet" num_layers: 18 }}
"""


def _load_spec(tmp_path, text):
    path = tmp_path / "spec.txt"
    path.write_text(text)
    return dn_spec.load(path, "experiment")


@pytest.fixture
def dataset(tmp_path):
    folds = _write_dataset(tmp_path)
    return tmp_path, folds


def test_load_data_splits_by_fold_and_maps_classes(dataset, tmp_path):
    root, folds = dataset
    lines = []
    result = data.load_data(_load_spec(tmp_path, _spec_text(root)), seed=3, echo=lines.append)
    assert result.class_names == ["car", "truck"]
    assert (result.width, result.height) == (64, 48)
    assert sorted(f.frame_id for f in result.val_frames) == folds[0]
    assert sorted(f.frame_id for f in result.train_frames) == folds[1]
    # van -> truck; person_sitting has no mapping and is dropped, but counted in the report.
    assert all(f.classes == ["car", "truck"] for f in result.train_frames + result.val_frames)
    assert result.report.issues["unknown_class"]
    text = "\n".join(lines)
    assert "Label check: 8 frames" in text
    assert "resizing" in text and "128x96" in text and "64x48" in text
    again = data.load_data(_load_spec(tmp_path, _spec_text(root)), seed=3, echo=lambda _: None)
    assert [f.frame_id for f in again.train_frames] == [f.frame_id for f in result.train_frames]


def test_a_class_mapped_outside_the_target_classes_is_read_then_left_out(dataset, tmp_path):
    root, _ = dataset
    lines = []
    result = data.load_data(_load_spec(tmp_path, _spec_text(root, classes=("car",))), seed=0, echo=lines.append)
    assert result.class_names == ["car"]
    assert all(f.classes == ["car"] for f in result.train_frames + result.val_frames)  # van -> truck: not trained
    assert "maps to truck, not among cost_function_config.target_classes" in "\n".join(lines)
    unknown = result.report.issues["unknown_class"]
    assert unknown and not [issue for issue in unknown if "van" in issue]  # a mapped class, not an unknown one


def test_strict_stops_on_label_problems(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(TaoctlError, match="--strict"):
        data.load_data(_load_spec(tmp_path, _spec_text(root)), seed=0, strict=True, echo=lambda _: None)


def test_validation_data_source_and_missing_fold(dataset, tmp_path):
    root, folds = dataset
    source = (f'validation_data_source {{ tfrecords_path: "{root}/tfrecords/data-fold-000*" '
              f'image_directory_path: "{root}/images" }}')
    result = data.load_data(_load_spec(tmp_path, _spec_text(root, split=source)), seed=0, echo=lambda _: None)
    assert len(result.train_frames) == 8 and len(result.val_frames) == 3
    with pytest.raises(TaoctlError, match=r"validation_fold 5: .*folds 0, 1"):
        data.load_data(_load_spec(tmp_path, _spec_text(root, split="validation_fold: 5")), seed=0,
                       echo=lambda _: None)


def test_user_errors_name_the_field(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(TaoctlError, match=r"cost_function_config.target_classes: no training objects of bus"):
        data.load_data(_load_spec(tmp_path, _spec_text(root, classes=("car", "bus"))), seed=0, echo=lambda _: None)
    (root / "images" / "img004.png").unlink()
    with pytest.raises(TaoctlError, match=r"data_sources\[0\].image_directory_path: 1 image.*img004.png"):
        data.load_data(_load_spec(tmp_path, _spec_text(root)), seed=0, echo=lambda _: None)
    bad = _spec_text(root).replace("output_image_width: 64", "output_image_width: 60")
    with pytest.raises(TaoctlError, match="output_image_width is 60"):
        data.load_data(_load_spec(tmp_path, bad), seed=0, echo=lambda _: None)


def _frames_and_config(tmp_path, augmentation):
    _write_dataset(tmp_path, frames_per_fold=(2,))
    spec = _load_spec(tmp_path, _spec_text(tmp_path, split="", augmentation=augmentation))
    frames = data.load_data(spec, seed=0, echo=lambda _: None).train_frames
    return frames, spec.augmentation_config


def _white_box(image: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(image.numpy().min(axis=0) > 200)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def test_plain_samples_are_resized_with_their_boxes(tmp_path):
    frames, config = _frames_and_config(tmp_path, "")
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=0)
    image, boxes, classes = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    np.testing.assert_allclose(boxes.numpy(), np.array([CAR, VAN]) / 2)
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(_white_box(image), np.array(CAR) / 2, atol=1)
    images, eval_boxes, eval_classes = data.load_eval_samples(frames, ["car", "truck"], 64, 48)
    assert images.shape == (2, 3, 48, 64) and np.array_equal(images[0], image.numpy())
    np.testing.assert_allclose(eval_boxes[1], np.array([CAR, VAN]) / 2)
    batch_images, batch_boxes, batch_classes = data.collate([dataset[0], dataset[1]])
    assert batch_images.shape == (2, 3, 48, 64) and len(batch_boxes) == 2 and batch_classes[1].dtype == torch.int64


def test_flips_move_boxes_with_the_pixels(tmp_path):
    frames, config = _frames_and_config(
        tmp_path, "spatial_augmentation { hflip_probability: 1.0 vflip_probability: 1.0 }")
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=0)
    image, boxes, _ = dataset[0]
    x1, y1, x2, y2 = np.array(CAR) / 2
    np.testing.assert_allclose(boxes[0].numpy(), [64 - x2, 48 - y2, 64 - x1, 48 - y1], atol=1e-4)
    np.testing.assert_allclose(_white_box(image), boxes[0].numpy(), atol=1)


def test_zoom_translate_rotate_keep_boxes_on_the_object_and_replay(tmp_path):
    frames, config = _frames_and_config(tmp_path, """spatial_augmentation {
        zoom_min: 0.7 zoom_max: 1.3 translate_max_x: 6 translate_max_y: 6 rotate_rad_max: 0.3 rotate_probability: 1.0 }
        color_augmentation { hue_rotation_max: 25 saturation_shift_max: 0.2 contrast_scale_max: 0.1
                             contrast_center: 0.5 color_shift_stddev: 0.02 }""")
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=7)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        image, boxes, classes = dataset[1]
        # The white car stays inside its box (a rotated box is re-fitted around its corners).
        white = _white_box(image)
        car = boxes[classes == 0][0].numpy()
        assert (white[:2] >= car[:2] - 1.5).all() and (white[2:] <= car[2:] + 1.5).all()
        assert (car[2:] - car[:2]).prod() < 2.0 * (white[2:] - white[:2]).prod()
        again = dataset[1]
        assert all(torch.equal(a, b) for a, b in zip((image, boxes, classes), again))
    dataset.set_epoch(0)
    first = dataset[1][0]
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[1][0])


def test_boxes_leaving_the_image_and_small_boxes_are_dropped(tmp_path):
    frames, config = _frames_and_config(
        tmp_path, "spatial_augmentation { translate_max_x: 100 zoom_min: 1 zoom_max: 1 }")
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=1)
    counts = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        _, boxes, classes = dataset[0]
        counts.add(len(boxes))
        assert len(boxes) == len(classes)
        if len(boxes):
            assert boxes[:, [0, 2]].min() >= 0 and boxes[:, [0, 2]].max() <= 64
    assert {0, 1, 2} & counts and len(counts) > 1
    config.preprocessing.min_bbox_width = 18.0  # the car is 16 px wide at the output size, the van 20
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=1)
    dataset.spatial.translate_max_x = 0
    assert dataset[0][2].tolist() == [1]


def test_crop_applies_before_resizing(tmp_path):
    frames, config = _frames_and_config(tmp_path, "")
    config.preprocessing.crop_left, config.preprocessing.crop_right = 64, 128
    config.preprocessing.crop_top, config.preprocessing.crop_bottom = 24, 72
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=0)
    _, boxes, classes = dataset[0]
    assert classes.tolist() == [1]  # the car lies left of the crop
    np.testing.assert_allclose(boxes[0].numpy(), [16.0, 16.0, 56.0, 48.0])
    config.preprocessing.crop_right = 400
    with pytest.raises(TaoctlError, match="crop_left/top/right/bottom"):
        data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=0)


def test_load_images_and_unreadable_file(tmp_path):
    good = tmp_path / "a.jpg"
    Image.fromarray(np.full((30, 50, 3), 90, dtype=np.uint8)).save(good)
    images, sizes = det_images.load_images([good], 32, 16)
    assert images.shape == (1, 3, 16, 32) and sizes == [(50, 30)]
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(TaoctlError, match="b.jpg"):
        det_images.load_images([good, bad], 32, 16)


def test_colour_turns_about_the_grey_axis(tmp_path):
    """Hue rotation and saturation leave grey pixels (the whole test image) as they are; contrast does not."""
    frames, config = _frames_and_config(
        tmp_path, "color_augmentation { hue_rotation_max: 90 saturation_shift_max: 0.5 }")
    plain = data.load_eval_samples(frames, ["car", "truck"], 64, 48)[0][0]
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=0)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        assert np.abs(dataset[0][0].numpy().astype(int) - plain).max() <= 1
    config.color_augmentation.contrast_scale_max = 0.5
    config.color_augmentation.contrast_center = 0.5
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=0)
    lifted = 0
    for epoch in range(6):
        dataset.set_epoch(epoch)
        image = dataset[0][0].numpy().astype(float)
        # (value - centre) * k + centre: black (0) and white (255) stay symmetric about 127.5.
        black, white = image[:, 0, 0].mean(), image[:, 15, 15].mean()
        assert np.isclose(black + white, 255, atol=2)
        lifted += black > 2
    assert lifted  # some draw lowers the contrast


def test_persistent_loader_workers_follow_set_epoch(tmp_path):
    frames, config = _frames_and_config(tmp_path, "spatial_augmentation { translate_max_x: 10 translate_max_y: 10 }")
    dataset = data.DetectNetTrainDataset(frames, ["car", "truck"], 64, 48, config, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, persistent_workers=True,
                                         collate_fn=data.collate)
    seen = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        seen.append(next(iter(loader))[1][0])
        expected = dataset[0][1]
        assert torch.equal(seen[-1], expected)
    assert not torch.equal(seen[0], seen[1])


def test_image_files_and_kitti_frames(dataset, tmp_path):
    root, _ = dataset
    files = det_images.image_files(root / "images")
    assert len(files) == 8 and files == sorted(files)
    assert det_images.image_files(files[0]) == [files[0]]
    with pytest.raises(TaoctlError, match="does not exist"):
        det_images.image_files(root / "nowhere")
    labels = root / "labels"
    labels.mkdir()
    (labels / "img000.txt").write_text(
        "Van 0 0 0 80 40 120 88 0 0 0 0 0 0 0\nperson_sitting 0 0 0 0 0 4 4 0 0 0 0 0 0 0\n")
    spec = _load_spec(tmp_path, _spec_text(root))
    frames = data.kitti_frames(root / "images", labels, spec, ["car", "truck"])
    assert [f.classes for f in frames] == [["truck"]]
