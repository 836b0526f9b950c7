"""The sample generator: deterministic, idempotent, exact KITTI boxes, a learnable ImageFolder."""

import json

import numpy as np
import pytest
from PIL import Image

from taoctl.engine.data import samples


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


SEED = 7


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One generation shared by the tests (each takes a few seconds)."""
    root = tmp_path_factory.mktemp("samples")
    stamp = samples.generate(root, seed=SEED)
    assert not stamp["skipped"]
    return root, stamp


def test_generates_both_sets_with_exact_boxes(generated):
    tmp_path, stamp = generated
    cls = tmp_path / "classification"
    for split, per_class in samples.CLASSIFICATION_COUNTS.items():
        for name in samples.CLASSES:
            files = list((cls / split / name).glob("*.png"))
            assert len(files) == per_class
    images = sorted((tmp_path / "kitti" / "images").glob("*.png"))
    labels = sorted((tmp_path / "kitti" / "labels").glob("*.txt"))
    assert len(images) == len(labels) == samples.KITTI_IMAGES
    assert [p.stem for p in images] == [p.stem for p in labels]
    counts = dict.fromkeys(samples.CLASSES, 0)
    for label in labels:
        image = Image.open(label.parent.parent / "images" / f"{label.stem}.png")
        assert image.size == samples.KITTI_SIZE
        lines = label.read_text().splitlines()
        assert 1 <= len(lines) <= samples.KITTI_OBJECTS[1]
        for line in lines:
            fields = line.split()
            assert len(fields) == 15 and fields[0] in samples.CLASSES
            x1, y1, x2, y2 = (float(v) for v in fields[4:8])
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
            counts[fields[0]] += 1
    assert counts == stamp["kitti"]["objects"] and min(counts.values()) > 100


def test_drawn_shape_fills_its_box_exactly():
    from PIL import ImageDraw

    rng = np.random.default_rng(1)
    for name in samples.CLASSES:
        for _ in range(20):
            image = Image.new("RGB", samples.KITTI_SIZE)
            x1, y1 = (int(v) for v in rng.integers(0, 100, size=2))
            box = (x1, y1, x1 + int(rng.integers(24, 73)), y1 + int(rng.integers(24, 73)))
            samples._draw_shape(ImageDraw.Draw(image), rng, name, box)
            ys, xs = np.nonzero(np.asarray(image).sum(axis=2))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box


def test_deterministic_idempotent_and_reseeded(generated, tmp_path):
    a, _ = generated
    b = tmp_path / "b"
    samples.generate(b, seed=SEED)
    assert _tree(a) == _tree(b)
    for rel in ("kitti/labels/000010.txt", "classification/val/square/square_0003.png", "kitti/images/000199.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    marker = a / "kitti" / "labels" / "000000.txt"
    mtime = marker.stat().st_mtime_ns
    assert samples.generate(a, seed=SEED)["skipped"]
    assert marker.stat().st_mtime_ns == mtime
    # Another seed regenerates, with different content and no leftover temp folders.
    assert not samples.generate(b, seed=SEED + 1)["skipped"]
    assert (a / "kitti/labels/000010.txt").read_bytes() != (b / "kitti/labels/000010.txt").read_bytes()
    assert json.loads((b / samples.STAMP).read_text())["seed"] == SEED + 1
    assert [p.name for p in b.iterdir() if p.name.startswith(".")] == []


def test_classes_differ_in_colour(generated):
    """Cheap learnability check: mean colour alone separates the classes well above chance."""
    tmp_path, _ = generated
    def features(split):
        xs, ys = [], []
        for k, name in enumerate(samples.CLASSES):
            for p in sorted((tmp_path / "classification" / split / name).glob("*.png")):
                xs.append(np.asarray(Image.open(p), dtype=np.float32).reshape(-1, 3).mean(0))
                ys.append(k)
        return np.array(xs), np.array(ys)
    xtr, ytr = features("train")
    xva, yva = features("val")
    centroids = np.stack([xtr[ytr == k].mean(0) for k in range(len(samples.CLASSES))])
    predicted = np.argmin(((xva[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == yva).mean() > 0.6


def test_command_line(generated, taoctl):
    root, stamp = generated
    done = taoctl.run_module("taoctl.engine.data.samples", "--out", root, "--seed", SEED, check=True)
    assert done.stdout.startswith("already generated:") and str(stamp["kitti"]["objects"]) in done.stdout
