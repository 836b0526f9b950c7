"""Offline augmentation: boxes follow every geometric op; the CLI writes a valid, reproducible KITTI set."""

import shutil

import numpy as np
import pytest
from PIL import Image

from taoctl.engine.data import augment, kitti
from taoctl.engine.metrics.detection import iou_matrix

BOXES = [(40, 30, 100, 80), (150, 60, 230, 150), (250, 150, 300, 220), (20, 150, 90, 230)]
GEOMETRIC = {
    "rotate_10": augment.AugmentPlan(rotation_degrees=10),
    "rotate_-25": augment.AugmentPlan(rotation_degrees=-25),
    "shear": augment.AugmentPlan(shear_ratio_x=0.2, shear_ratio_y=0.1),
    "flip_h": augment.AugmentPlan(flip_horizontal=True),
    "flip_v": augment.AugmentPlan(flip_vertical=True),
    "translate": augment.AugmentPlan(translate_x=15, translate_y=-10),
    "resize": augment.AugmentPlan(output_width=160, output_height=120),
    "all": augment.AugmentPlan(rotation_degrees=8, shear_ratio_x=0.1, flip_horizontal=True, translate_x=5,
                               output_width=256, output_height=192),
}


def _mask(box, size=(320, 240)):
    image = np.zeros((size[1], size[0], 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_boxes_enclose_the_transformed_shapes(name):
    plan = GEOMETRIC[name]
    objects = [kitti.KittiObject("a", tuple(map(float, b)), line=i + 1) for i, b in enumerate(BOXES)]
    checked = 0
    for obj in objects:
        # Each rectangle rendered alone, pushed through the same transform as its box.
        out, boxes = augment.augment_frame(_mask([int(v) for v in obj.box]), [obj], plan, seed=3)
        ys, xs = np.nonzero(out[..., 0] > 127)
        if not len(boxes):
            assert len(xs) < 0.25 * (obj.box[2] - obj.box[0]) * (obj.box[3] - obj.box[1])  # dropped: mostly gone
            continue
        truth = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
        iou = iou_matrix(np.array([boxes[0].box]), truth)[0, 0]
        assert iou >= 0.9, (name, obj.box, boxes[0].box, truth)
        checked += 1
    assert checked >= 3


def test_boxes_leaving_the_image_are_clipped_or_dropped():
    objects = [kitti.KittiObject("a", (0.0, 0.0, 40.0, 40.0), line=1), kitti.KittiObject("b", (150.0, 100.0, 200.0, 150.0), line=2)]
    stats = augment.AugmentStats()
    image = np.full((240, 320, 3), 90, np.uint8)
    _, out = augment.augment_frame(image, objects, augment.AugmentPlan(translate_x=-30, translate_y=-30), seed=0,
                                   stats=stats, where="x.txt")
    assert [o.cls for o in out] == ["b"]  # "a" keeps (10x10)/(40x40) < min_visibility of its area
    assert stats.dropped == ["x.txt:1 a (left the image)"]
    _, out = augment.augment_frame(image, objects, augment.AugmentPlan(translate_x=-20), seed=0)
    assert out[0].box == pytest.approx((0.0, 0.0, 20.0, 40.0))  # half outside: clipped, kept


@pytest.fixture(scope="module")
def small_kitti(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        (root / "labels" / f"{i:03d}.txt").write_text(
            "car 0.00 0 0.00 10.00 10.00 60.00 50.00 0.00 0.00 0.00 0.00 0.00 0.00 0.00\n"
            "person 0.00 1 0.00 90.00 40.00 130.00 110.00 1.50 0.60 0.80 1.00 2.00 3.00 0.10\n")
    return root


def test_augment_cli_tao3_spec(small_kitti, tmp_path, taoctl):
    spec = tmp_path / "aug.txt"
    spec.write_text('spatial_config { rotation_config { angle: 10 units: "degrees" } flip_config { flip_horizontal: true } }\n'
                    'color_config { hue_saturation_config { hue_rotation_angle: 20 } brightness_config { offset: 10 } }\n'
                    'blur_config { std: 1.0 size: 5 }\n'
                    'dataset_config { image_path: "images" label_path: "labels" }\n')
    outputs = []
    for name in ("a", "b"):
        done = taoctl("augment", "-a", str(spec), "-d", str(small_kitti), "-o", str(tmp_path / name), "--strict")
        assert done.returncode == 0, done.stderr
        assert "no label problems found" in done.stdout.split("Output")[-1]
        outputs.append(tmp_path / name)
    frames, report = kitti.read_kitti(outputs[0] / "images", outputs[0] / "labels")
    assert report.clean and len(frames) == 6 and sum(len(f.objects) for f in frames) == 12
    first = frames[0].objects[1]
    assert first.cls == "person" and first.occlusion == 1 and first.dimensions == (1.5, 0.6, 0.8)
    # Flipped horizontally: the car that was on the left is now on the right.
    assert frames[0].objects[0].box[0] > 80
    # --strict refuses an input with label problems before writing anything.
    broken = tmp_path / "broken"
    shutil.copytree(small_kitti, broken)
    (broken / "labels" / "005.txt").write_text("car 0 0 0 10 10 5 5 0 0 0 0 0 0 0\n")
    done = taoctl("augment", "-a", str(spec), "-d", str(broken), "-o", str(tmp_path / "c"), "--strict")
    assert done.returncode == 2 and "005.txt:1" in done.stdout and not (tmp_path / "c").exists()
    # Deterministic: same spec and seed, same bytes.
    for sub in ("images/000.png", "labels/003.txt"):
        assert (outputs[0] / sub).read_bytes() == (outputs[1] / sub).read_bytes()


def test_dataset_augmentation_yaml(small_kitti, tmp_path, taoctl):
    spec = tmp_path / "augment.yaml"
    spec.write_text(f"data:\n  image_dir: {small_kitti / 'images'}\n  ann_path: {small_kitti / 'labels'}\n"
                    f"  dataset_type: kitti\n  output_dataset: {tmp_path / 'out'}\n"
                    "  output_image_width: 80\n  output_image_height: 60\n"
                    "spatial_aug:\n  rotation:\n    angle: [5, -5]\n  shear:\n    shear_ratio_x: 0.1\n  flip:\n    flip_vertical: true\n"
                    "color_aug:\n  hue:\n    hue_rotation_angle: [10]\n"
                    "random_seed: 7\n")
    done = taoctl("dataset", "augmentation", "-e", str(spec))
    assert done.returncode == 0, done.stderr
    frames, report = kitti.read_kitti(tmp_path / "out" / "images", tmp_path / "out" / "labels")
    assert report.clean and {(f.width, f.height) for f in frames} == {(80, 60)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  image_dir: x\n  ann_path: y\nspatial_aug:\n  rotaton:\n    angle: [5]\n")
    done = taoctl("dataset", "augmentation", "-e", str(bad))
    assert done.returncode == 2 and "bad.yaml:5:3" in done.stderr and "rotation" in done.stderr


@pytest.mark.slow
def test_bccd_augmented_converts_without_warnings(tmp_path, taoctl):
    from pathlib import Path

    root = Path("/work/shared/data/bccd_kitti")
    if not root.is_dir():
        pytest.skip("bccd_kitti not available")
    spec = tmp_path / "aug.txt"
    spec.write_text('spatial_config { rotation_config { angle: 10 } flip_config { flip_horizontal: true } }\n'
                    'color_config { hue_saturation_config { hue_rotation_angle: 15 } }\n'
                    'blur_config { std: 1.0 size: 5 }\n'
                    'dataset_config { image_path: "images" label_path: "labels" }\nimage_extension: ".jpg"\n')
    out = tmp_path / "aug"
    done = taoctl("augment", "-a", str(spec), "-d", str(root), "-o", str(out), "--strict")
    assert done.returncode == 0, done.stderr
    convert = tmp_path / "convert.txt"
    convert.write_text(f'kitti_config {{ root_directory_path: "{out}" image_dir_name: "images" label_dir_name: "labels" '
                       f'image_extension: ".jpg" partition_mode: "random" num_partitions: 2 val_split: 20 num_shards: 2 }}\n')
    done = taoctl("detectnet_v2", "dataset_convert", "-d", str(convert), "-o", str(tmp_path / "tf" / "aug"), "--strict")
    assert done.returncode == 0, done.stderr
    assert "no label problems found" in done.stdout and done.stderr == ""


def test_directions_and_colour_follow_tao():
    # A bright point right of the centre: +90 degrees (TAO: clockwise) takes it below the centre.
    image = np.zeros((101, 101, 3), np.uint8)
    image[48:53, 85:90] = 255
    out, _ = augment.augment_frame(image, [], augment.AugmentPlan(rotation_degrees=90), seed=0)
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(xs.mean() - 50) < 3 and ys.mean() > 80
    # shear_ratio_x moves lower rows right: x' = x + ratio * (y - cy).
    image = np.zeros((101, 101, 3), np.uint8)
    image[88:93, 48:53] = 255
    out, _ = augment.augment_frame(image, [], augment.AugmentPlan(shear_ratio_x=0.2), seed=0)
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert xs.mean() == pytest.approx(50 + 0.2 * 40, abs=1.5)
    # Contrast and brightness: (in + offset - center) * (1 + contrast) + center.
    flat = np.full((4, 4, 3), 100, np.uint8)
    out, _ = augment.augment_frame(flat, [], augment.AugmentPlan(contrast=0.5, contrast_center=127.5,
                                                                 brightness_offset=10), seed=0)
    assert int(out[0, 0, 0]) == round((100 + 10 - 127.5) * 1.5 + 127.5)


def test_list_values_are_picked_as_tao_does():
    rng = np.random.default_rng(0)
    plan = augment.AugmentPlan()
    ranged = [plan.draw({"rotation_degrees": [10, 30]}, rng).rotation_degrees for _ in range(200)]
    assert 10 <= min(ranged) < 12 and 28 < max(ranged) <= 30 and len(set(ranged)) > 150  # a uniform range
    picked = {plan.draw({"rotation_degrees": [0, 90, 180]}, rng).rotation_degrees for _ in range(100)}
    assert picked == {0.0, 90.0, 180.0}
    assert plan.draw({"translate_x": [5]}, rng).translate_x == 5
    assert isinstance(plan.draw({"translate_x": [0, 7]}, rng).translate_x, int)
