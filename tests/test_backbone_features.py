"""Feature levels of every backbone, create_features, and models with several named heads
(a detector's output_cov/output_bbox) through pruning, ONNX, model files and pretrained loading."""

import copy
import math
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from taoctl.engine.backbones import FeatureBackbone, create_features, create_model
from taoctl.engine.modelfile import load_model, load_weights_into, save_model
from taoctl.engine.pretrained import load_pretrained
from taoctl.engine.pruning import prune_model
from taoctl.errors import TaoctlError

from test_backbones import MODELS
from test_pretrained import mobilenet_v2_file

H, W = 96, 160  # not the square feature_info probes with, so both axes are checked


def _outputs_of(model: nn.Module, names, x) -> dict[str, torch.Tensor]:
    """What the named modules of ``model`` output during one forward pass on ``x``."""
    seen = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach().clone())) for n in names]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def _stride(size: int, out: int) -> int:
    return 2 ** round(math.log2(size / out))


@pytest.mark.parametrize("name", MODELS)
def test_feature_info_matches_a_real_forward(name):
    model = create_model(name, 3, input_image_size=f"3,{H},{W}").eval()
    levels = model.feature_info()
    x = torch.randn(1, 3, H, W)
    outputs = _outputs_of(model, model.trunk_names, x)
    for level in levels:
        out = outputs[level.module]
        assert out.shape[1] == level.channels, level
        assert (_stride(H, out.shape[2]), _stride(W, out.shape[3])) == (level.stride, level.stride), level
    strides = [level.stride for level in levels]
    assert strides == sorted(set(strides)) and strides[-1] >= 16
    # The deepest level is the whole trunk: what the classifier head reads.
    assert levels[-1].module == model.trunk_names[-1] and levels[-1].channels == model.num_features
    with torch.no_grad():
        assert torch.equal(outputs[levels[-1].module], model.forward_features(x))
    # Each level is the deepest trunk module at its stride: the next one changes the resolution.
    order = model.trunk_names
    for level in levels[:-1]:
        after = order[order.index(level.module) + 1]
        assert outputs[after].shape[-1] < outputs[level.module].shape[-1], level


@pytest.mark.parametrize("name, strides", [
    ("resnet18", (8, 16, 32)),
    ("resnet18", (16,)),
    ("mobilenet_v2", (16,)),
    ("mobilenet_v2", (8, 16, 32)),
    ("efficientnet_b0", (8, 16, 32)),
    ("darknet53", (8, 16, 32)),
    ("cspdarknet_tiny", (16, 32)),
    ("googlenet", (16,)),
    ("vgg16", (16,)),
    ("squeezenet", (8, 16)),
])
def test_create_features_returns_the_levels_and_nothing_deeper(name, strides):
    features = create_features(name, strides=strides, input_image_size=f"3,{H},{W}").eval()
    classifier = create_model(name, 3, input_image_size=f"3,{H},{W}").eval()
    missing, unexpected = features.load_state_dict(classifier.state_dict(), strict=False)
    assert missing == []  # every tensor keeps the classifier's name
    assert isinstance(features, FeatureBackbone) and features.strides == tuple(sorted(strides))
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        maps = features(x)
    expected = _outputs_of(classifier, features.level_names, x)
    assert len(maps) == len(strides)
    for got, name_, stride, channels in zip(maps, features.level_names, features.strides, features.channels):
        assert torch.equal(got, expected[name_])
        assert got.shape[1] == channels and _stride(H, got.shape[2]) == _stride(W, got.shape[3]) == stride
    cut = classifier.trunk_names.index(features.level_names[-1]) + 1
    dropped = classifier.trunk_names[cut:] + list(classifier.head_names)
    held = dict(features.named_modules())
    assert not [n for n in dropped if n in held]
    assert all(k.startswith(tuple(n + "." for n in dropped)) for k in unexpected)
    assert len(unexpected) > 0  # at least the classifier head is gone


def test_a_stride_the_network_lacks_is_named():
    with pytest.raises(TaoctlError, match=r"squeezenet has no stride-32 feature level \(its strides: 2, 4, 8, 16\)"):
        create_features("squeezenet", strides=(8, 16, 32))


def test_freezing_counts_the_classifier_blocks():
    features = create_features("resnet18", strides=(8, 16), freeze_blocks=[0, 1], freeze_bn=True).train()
    assert not any(p.requires_grad for m in (features.conv1, features.layer1) for p in m.parameters())
    assert features.layer2[0].conv1.weight.requires_grad
    assert not features.layer3[0].bn1.weight.requires_grad and not features.layer3[0].bn1.training
    before = features.layer3[0].bn1.running_mean.clone()
    sum(m.sum() for m in features(torch.randn(2, 3, 64, 64))).backward()
    assert torch.equal(before, features.layer3[0].bn1.running_mean)
    assert features.conv1.weight.grad is None and features.layer2[0].conv1.weight.grad is not None
    with pytest.raises(TaoctlError, match=r"freeze_blocks 4 is not a block of resnet18 cut at stride 16 \(blocks 0-3\)"):
        create_features("resnet18", strides=(16,), freeze_blocks=[4])


class TwoHeadDetector(nn.Module):
    """detectnet_v2's shape: a stride-16 feature map, a coverage and a box head (1x1 convs)."""

    head_names = ("output_cov", "output_bbox")

    def __init__(self, arch="resnet10", num_classes=3):
        super().__init__()
        self.backbone = create_features(arch, strides=(16,), input_image_size="3,64,64")
        (channels,) = self.backbone.channels
        self.output_cov = nn.Conv2d(channels, num_classes, 1)
        self.output_bbox = nn.Conv2d(channels, 4 * num_classes, 1)

    def forward(self, x):
        (features,) = self.backbone(x)
        return torch.sigmoid(self.output_cov(features)), self.output_bbox(features)


def _weak_filters(model: nn.Module) -> nn.Module:
    """Every other filter of every conv scaled down, so that a norm threshold prunes them."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[::2] *= 0.1
    return model.eval()


def test_pruning_keeps_every_named_head_and_the_model_round_trips(tmp_path):
    import onnxruntime as ort

    detector = _weak_filters(TwoHeadDetector())
    unprotected = copy.deepcopy(detector)
    report = prune_model(detector, (3, 64, 64), threshold=0.5, granularity=1, min_filters=1)
    assert report.params_after < 0.6 * report.params_before
    assert (detector.output_cov.out_channels, detector.output_bbox.out_channels) == (3, 12)
    assert detector.output_cov.in_channels == detector.backbone.channels[0] < 256
    # The protection comes from head_names: without output layers the heads are narrowed too.
    prune_model(unprotected, (3, 64, 64), threshold=0.5, granularity=1, min_filters=1, output_layers=[])
    assert unprotected.output_cov.out_channels < 3 and unprotected.output_bbox.out_channels < 12

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cov, bbox = detector(x)
    assert cov.shape == (2, 3, 4, 4) and bbox.shape == (2, 12, 4, 4)

    # ONNX (the exporter taoctl uses): two named outputs, equal in onnxruntime.
    onnx_path = tmp_path / "detector.onnx"
    with torch.no_grad():
        program = torch.onnx.export(detector, (x,), dynamo=True, input_names=["input_1"],
                                    output_names=["output_cov", "output_bbox"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                                    external_data=False, verbose=False)
    program.save(str(onnx_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output_cov", "output_bbox"]
    batch = torch.randn(3, 3, 64, 64)
    got = session.run(None, {"input_1": batch.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in detector(batch)]
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.abs(g - w).max() < 1e-4

    # The model file rebuilds the pruned widths from its manifest, as for a classifier.
    path = tmp_path / "detector.tlt"
    save_model(path, detector, {"task": "two_head_test", "arch": {"arch": "resnet10"}})
    rebuilt = load_weights_into(TwoHeadDetector(), load_model(path)).eval()
    with torch.no_grad():
        for a, b in zip(rebuilt(batch), detector(batch)):
            assert torch.equal(a, b)

    # Retraining it for other classes: the backbone loads, both heads start afresh and are named.
    retrain = TwoHeadDetector(num_classes=5)
    loaded = load_pretrained(retrain, path, log=None)
    assert loaded.heads_reinitialised == ["output_cov", "output_bbox"]
    assert loaded.missing_backbone == [] and loaded.mismatched == []
    assert (retrain.output_cov.out_channels, retrain.output_bbox.out_channels) == (5, 20)
    assert retrain.output_cov.in_channels == detector.output_cov.in_channels
    assert "heads output_cov, output_bbox re-initialised" in loaded.summary()
    with torch.no_grad():
        assert torch.equal(retrain.eval().backbone(batch)[0], detector.backbone(batch)[0])


def test_a_feature_backbone_alone_prunes_and_exports_every_level(tmp_path):
    import onnxruntime as ort

    features = _weak_filters(create_features("mobilenet_v2", strides=(8, 16, 32), input_image_size="3,64,64"))
    report = prune_model(features, (3, 64, 64), threshold=0.5, granularity=8, min_filters=8)
    assert report.params_after < report.params_before and report.layers
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = features(x)
    assert [m.shape[1] for m in maps] == list(features.channels)
    assert [m.shape[2] for m in maps] == [8, 4, 2]
    program = torch.onnx.export(features, (x,), dynamo=True, input_names=["input_1"],
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                                external_data=False, verbose=False)
    program.save(str(tmp_path / "features.onnx"))
    session = ort.InferenceSession(str(tmp_path / "features.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_1": x.numpy()})
    assert len(got) == 3
    for g, w in zip(got, maps):
        assert np.abs(g - w.numpy()).max() < 1e-4


def test_imagenet_mobilenet_v2_loads_onto_a_stride_16_cut(tmp_path, monkeypatch):
    file = mobilenet_v2_file()  # skips when the weights package is not installed
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    features = create_features("mobilenet_v2", strides=(16,))
    report = load_pretrained(features, "torchvision:mobilenet_v2.IMAGENET1K_V1", log=None)
    assert report.missing == [] and report.mismatched == [] and report.heads_reinitialised == []
    assert len(report.loaded) == sum(1 for k in features.state_dict() if not k.endswith("num_batches_tracked"))
    assert "features.14.conv.0.0.weight" in report.unexpected and "classifier.1.weight" in report.unexpected
    state = torch.load(file, weights_only=True)
    assert torch.equal(features.features[13].conv[2].weight, state["features.13.conv.2.weight"])
    classifier = create_model("mobilenet_v2", 1000).eval()
    classifier.load_state_dict(state)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(features.eval()(x)[0], _outputs_of(classifier, ["features.13"], x)["features.13"])


def test_a_pruned_classification_model_file_loads_onto_its_feature_cut(tmp_path):
    classifier = _weak_filters(create_model("resnet10", 3, input_image_size="3,64,64"))
    prune_model(classifier, (3, 64, 64), threshold=0.5, granularity=8, min_filters=8)
    path = tmp_path / "classifier.tlt"
    save_model(path, classifier, {"task": "classification"}, key="k3y")
    features = create_features("resnet10", strides=(8, 16), input_image_size="3,64,64")
    report = load_pretrained(features, path, key="k3y", log=None)
    assert report.missing == [] and report.mismatched == []
    assert features.layer3[0].conv1.out_channels == classifier.layer3[0].conv1.out_channels < 256
    x = torch.randn(1, 3, 64, 64)
    expected = _outputs_of(classifier, ["layer2", "layer3"], x)
    with torch.no_grad():
        stride8, stride16 = features.eval()(x)
    assert torch.equal(stride8, expected["layer2"]) and torch.equal(stride16, expected["layer3"])
