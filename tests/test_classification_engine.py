"""Engine pieces of the classification workflow: ImageFolder checks, metrics, pruning, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from taoctl.engine import modelfile
from taoctl.engine.backbones import create_model
from taoctl.engine.data import imagefolder
from taoctl.engine.metrics.classification import ClassificationMeter, format_report, save_confusion_png
from taoctl.engine.pruning import prune_model
from taoctl.errors import TaoctlError


def _photo(path, mode="RGB", size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


@pytest.fixture()
def messy_folder(tmp_path):
    root = tmp_path / "train"
    for name in ("cat", "dog", "empty"):
        (root / name).mkdir(parents=True)
    _photo(root / "cat" / "a b.jpeg")
    _photo(root / "cat" / "gray.png", "L")
    _photo(root / "cat" / "rgba.png", "RGBA")
    _photo(root / "dog" / "pal.gif", "P")
    _photo(root / "dog" / "ok.jpg")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_scan_names_every_problem_and_skips_them(messy_folder):
    index = imagefolder.scan_image_folder(messy_folder)
    assert index.classes == ["cat", "dog", "empty"]
    arrays, labels, paths = imagefolder.cache_images(index, (24, 24), 3, "resize", threads=1)
    assert len(arrays) == 5 and all(a.shape == (24, 24, 3) and a.dtype == np.uint8 for a in arrays)
    assert sorted(labels) == [0, 0, 0, 1, 1]
    summary = index.summary()
    assert "notes.txt" in summary and "broken.jpg" in summary and "'empty' has no images" in summary
    assert {m for _, m in index.converted} == {"L", "RGBA", "P"}
    with pytest.raises(TaoctlError, match="drop --strict"):
        index.check(strict=True)


def test_scan_with_model_classes_skips_unknown_folders(messy_folder):
    index = imagefolder.scan_image_folder(messy_folder, ["dog", "cat"])
    assert index.classes == ["dog", "cat"]
    assert any("'empty'" in w for w in index.warnings)
    assert {label for _, label in index.samples} == {0, 1}


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(TaoctlError, match="not a folder"):
        imagefolder.scan_image_folder(tmp_path / "nope")


def test_grayscale_model_gets_one_channel(messy_folder):
    index = imagefolder.scan_image_folder(messy_folder)
    arrays, _, _ = imagefolder.cache_images(index, (16, 20), 1, "center", threads=1)
    assert all(a.shape == (16, 20, 1) for a in arrays)


def test_seeded_loader_repeats_its_augmentations_and_workers_differ():
    # albumentations keeps its own random state: without the worker reseed, both workers copy the
    # parent's and crop alike, and unseeded runs differ from each other.
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    dataset = imagefolder.CachedImageDataset([image] * 6, [0] * 6,
                                             imagefolder.train_transform((16, 16), True, True, True, seed=3))

    def draw():
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2,
                                             generator=torch.Generator().manual_seed(5),
                                             worker_init_fn=imagefolder.seed_worker_transform)
        return [images[0] for images, _ in loader]

    first, second = draw(), draw()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # items 0 and 1 come from different workers


def test_normalizer_modes_match_keras_preprocess_input():
    batch = np.full((1, 3, 2, 2), 255, np.uint8)
    batch[:, 0] = 10  # red
    caffe = imagefolder.Normalizer("caffe", 3)(torch.from_numpy(batch))
    # caffe: BGR order, ImageNet mean subtracted, no scaling.
    assert torch.allclose(caffe[0, :, 0, 0], torch.tensor([255 - 103.939, 255 - 116.779, 10 - 123.68]))
    tf = imagefolder.Normalizer("tf", 3).numpy(batch)
    assert np.allclose(tf[0, :, 0, 0], [10 / 127.5 - 1, 1, 1])
    torch_mode = imagefolder.Normalizer("torch", 3).numpy(batch)
    assert np.allclose(torch_mode[0, 1, 0, 0], (1 - 0.456) / 0.224, atol=1e-5)
    custom = imagefolder.Normalizer("caffe", 3, {"r": 10, "g": 0, "b": 0}).numpy(batch)
    assert np.allclose(custom[0, :, 0, 0], [255, 255, 0])
    with pytest.raises(TaoctlError, match="image mean keys"):
        imagefolder.Normalizer("caffe", 1, {"r": 1.0})
    with pytest.raises(TaoctlError, match="unknown preprocessing mode"):
        imagefolder.Normalizer("yolo", 3)


def test_metrics_report_and_png(tmp_path):
    meter = ClassificationMeter(3, top_k=2)
    logits = np.array([[5, 1, 0], [0, 5, 1], [0, 4, 5], [0, 1, 5]], dtype=np.float32)
    meter.update(logits, [0, 1, 1, 0], loss_sum=2.0)
    report = meter.report(["a", "b", "c"])
    assert report["top1_accuracy"] == 0.5
    assert report["top2_accuracy"] == 0.75  # the last sample's label 0 is not among its two best
    assert report["confusion_matrix"] == [[1, 0, 1], [0, 1, 1], [0, 0, 0]]
    assert report["per_class"]["b"]["precision"] == 1.0 and report["per_class"]["b"]["recall"] == 0.5
    assert report["loss"] == 0.5
    assert "top-2 accuracy: 75.00 %" in format_report(report)
    save_confusion_png(report, tmp_path / "cm.png")
    assert Image.open(tmp_path / "cm.png").size[0] > 100
    json.dumps(report)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_pruning_respects_granularity_and_reloads(arch, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, input_image_size="3,32,32").eval()
    with torch.no_grad():  # fresh weights have near-equal filter norms: make every other filter weak
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight[::2] *= 0.1
    report = prune_model(model, (3, 32, 32), threshold=0.7, granularity=8, min_filters=8)
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    for name, before, after in report.layers:
        assert after % 8 == 0 or after == before, name
        assert after >= 8
    assert model.head().out_features == 3
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    path = tmp_path / "pruned.tlt"
    modelfile.save_model(path, model, {"task": "classification"})
    fresh = create_model(arch, num_classes=3, input_image_size="3,32,32")
    modelfile.load_weights_into(fresh, modelfile.load_model(path))
    assert torch.allclose(fresh.eval()(x), expected, atol=1e-5)


def test_pruning_excluded_layers_and_bad_names():
    model = create_model("mobilenet_v2", num_classes=2, input_image_size="3,32,32").eval()
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    prune_model(model, (3, 32, 32), threshold=0.9, excluded=["features.1"])
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert after["features.1.conv.0.0"] == widths["features.1.conv.0.0"]
    assert sum(after.values()) < sum(widths.values())
    with pytest.raises(TaoctlError, match="no layer named"):
        prune_model(model, (3, 32, 32), excluded=["features.99"])
