"""TAO Keras .hdf5 weights onto taoctl backbones, and TAO's Keras layer names for prune -el.

The files are written here with h5py in Keras' layout, their layer names and shapes spelled out
from TAO's TF1 templates (nvidia_tao_tf1/core/templates: resnet.py, mobilenet.py, utils.py
CNNBlock / _inverted_res_block), independently of taoctl's own mapping, so a disagreement
between taoctl's topology and TAO's shows up as missing or unexpected tensors.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from taoctl.engine import pretrained as pre
from taoctl.engine.backbones import create_features, create_model
from taoctl.engine.keras_weights import SUPPORTED_ARCHS, keras_layer_names, read_keras_weights, subblock_letters
from taoctl.engine.pruning import prune_model
from taoctl.errors import TaoctlError

RNG = np.random.default_rng(0)


def conv(kh, kw, cin, cout, bias=False):
    weights = [("kernel", RNG.standard_normal((kh, kw, cin, cout)).astype(np.float32))]
    return weights + ([("bias", RNG.standard_normal(cout).astype(np.float32))] if bias else [])


def depthwise(channels):
    return [("depthwise_kernel", RNG.standard_normal((3, 3, channels, 1)).astype(np.float32))]


def batchnorm(channels):
    return [("gamma", RNG.uniform(0.5, 1.5, channels).astype(np.float32)),
            ("beta", RNG.standard_normal(channels).astype(np.float32)),
            ("moving_mean", RNG.standard_normal(channels).astype(np.float32)),
            ("moving_variance", RNG.uniform(0.5, 2.0, channels).astype(np.float32))]


def dense(cin, cout):
    return [("kernel", RNG.standard_normal((cin, cout)).astype(np.float32)),
            ("bias", RNG.standard_normal(cout).astype(np.float32))]


def tao_resnet18(nclasses, all_projections=True):
    """Layers of TAO's resnet18 classifier (use_batch_norm, no conv bias), Keras shapes."""
    layers = [("conv1", conv(7, 7, 3, 64)), ("bn_conv1", batchnorm(64)), ("activation_1", [])]
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for repeat in "ab":
            prefix = f"block_{stage}{repeat}_"
            layers += [(prefix + "conv_1", conv(3, 3, cin, width)), (prefix + "bn_1", batchnorm(width)),
                       (prefix + "conv_2", conv(3, 3, width, width)), (prefix + "bn_2", batchnorm(width))]
            # TAO projects the first block of every stage; every block with all_projections.
            if all_projections or repeat == "a":
                layers += [(prefix + "conv_shortcut", conv(1, 1, cin, width)),
                           (prefix + "bn_shortcut", batchnorm(width))]
            cin = width
    return layers + [("predictions", dense(512, nclasses))]


def tao_mobilenet_v2(nclasses):
    """Layers of TAO's mobilenet_v2 classifier with all_projections (alpha 1, no conv bias)."""
    layers = [("conv1", conv(3, 3, 3, 32)), ("bn_conv1", batchnorm(32)), ("re_lu_0", []),
              ("expanded_conv_depthwise", depthwise(32)), ("expanded_conv_depthwise_bn", batchnorm(32)),
              ("expanded_conv_project", conv(1, 1, 32, 16)), ("expanded_conv_project_bn", batchnorm(16))]
    cin = 16
    filters = (24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320)
    strides = (2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)
    for block_id, (cout, stride) in enumerate(zip(filters, strides), start=1):
        prefix, hidden = f"block_{block_id}_", 6 * cin
        layers += [(prefix + "expand", conv(1, 1, cin, hidden)), (prefix + "expand_bn", batchnorm(hidden)),
                   (prefix + "depthwise", depthwise(hidden)), (prefix + "depthwise_bn", batchnorm(hidden)),
                   (prefix + "project", conv(1, 1, hidden, cout)), (prefix + "project_bn", batchnorm(cout))]
        if cin == cout and stride == 1:
            layers.append((prefix + "projected_inputs", conv(1, 1, cin, cin)))
        cin = cout
    return layers + [("conv_1", conv(1, 1, 320, 1280)), ("conv_1_bn", batchnorm(1280)),
                     ("predictions", dense(1280, nclasses))]


def write_keras_h5(path, layers, whole_model=False, nested_in=None):
    """Keras' HDF5 layout: save_weights (root), or model.save (model_weights/); optionally nested."""
    def strings(values):
        return np.array([v.encode("utf8") for v in values])

    with h5py.File(path, "w") as handle:
        root = handle
        if whole_model:
            handle.attrs["keras_version"] = b"2.2.4"
            handle.attrs["model_config"] = b'{"class_name": "Model"}'
            root = handle.create_group("model_weights")
        if nested_in:  # the network saved as one layer of an outer model
            root.attrs["layer_names"] = strings([nested_in])
            group = root.create_group(nested_in)
            names = [f"{layer}/{w}:0" for layer, weights in layers for w, _ in weights]
            group.attrs["weight_names"] = strings(names)
            for name, (_, value) in zip(names, [wv for _, weights in layers for wv in weights]):
                group.create_dataset(name, data=value)
            return
        root.attrs["layer_names"] = strings([layer for layer, _ in layers])
        for layer, weights in layers:
            group = root.create_group(layer)
            group.attrs["weight_names"] = strings([f"{layer}/{w}:0" for w, _ in weights])
            for w, value in weights:
                group.create_dataset(f"{layer}/{w}:0", data=value)


def keras_value(layers, layer, weight):
    return torch.from_numpy(dict(dict(layers)[layer])[weight])


def test_subblock_letters_follow_tao():
    assert [subblock_letters(i) for i in (0, 1, 22, 25, 26, 27)] == ["a", "b", "w", "z", "aa", "ab"]


def test_resnet18_tao_file_loads_every_tensor_into_the_right_place(tmp_path):
    layers = tao_resnet18(nclasses=4)
    path = tmp_path / "resnet_18.hdf5"
    write_keras_h5(path, layers)
    model = create_model("resnet18", 4, all_projections=True)
    report = pre.load_pretrained(model, path, log=None)
    assert report.missing_backbone == [] and report.missing == []
    assert report.unexpected == [] and report.mismatched == [] and not report.by_position
    assert report.heads_reinitialised == []
    # HWIO -> OIHW, and BatchNorm's moving statistics into its buffers.
    kernel = keras_value(layers, "block_2a_conv_1", "kernel")
    assert torch.equal(model.layer2[0].conv1.weight, kernel.permute(3, 2, 0, 1))
    assert model.layer2[0].conv1.weight[5, 7, 1, 2] == kernel[1, 2, 7, 5]
    assert torch.equal(model.layer3[1].downsample[1].running_mean,
                       keras_value(layers, "block_3b_bn_shortcut", "moving_mean"))
    assert torch.equal(model.bn1.running_var, keras_value(layers, "bn_conv1", "moving_variance"))
    assert torch.equal(model.bn1.weight, keras_value(layers, "bn_conv1", "gamma"))
    assert torch.equal(model.fc.weight, keras_value(layers, "predictions", "kernel").t())


def test_classic_tao_resnet18_reports_its_extra_layer1_projection(tmp_path):
    # TAO projects block_1a's shortcut even where the shape is kept; taoctl (as torchvision) does
    # not without all_projections: those tensors are reported, the rest loads.
    path = tmp_path / "resnet_18.hdf5"
    write_keras_h5(path, tao_resnet18(nclasses=1000, all_projections=False))
    model = create_model("resnet18", 3)
    report = pre.load_pretrained(model, path, log=None)
    assert report.missing_backbone == []
    assert sorted(report.unexpected) == sorted(
        ["block_1a_conv_shortcut/kernel"] + [f"block_1a_bn_shortcut/{w}" for w in
                                             ("gamma", "beta", "moving_mean", "moving_variance")])
    assert report.heads_reinitialised == ["fc"]  # 1000 ImageNet classes, 3 here


def test_mobilenet_v2_whole_model_file_with_depthwise_kernels(tmp_path):
    layers = tao_mobilenet_v2(nclasses=1000)
    path = tmp_path / "mobilenet_v2.hdf5"
    write_keras_h5(path, layers, whole_model=True)
    model = create_model("mobilenet_v2", 2, all_projections=True)
    report = pre.load_pretrained(model, path, log=None)
    assert report.missing_backbone == [] and report.unexpected == [] and report.mismatched == []
    assert report.heads_reinitialised == ["classifier.1"]
    dw = keras_value(layers, "block_3_depthwise", "depthwise_kernel")  # (3, 3, 144, 1)
    assert torch.equal(model.features[4].conv[1][0].weight, dw.permute(2, 3, 0, 1))
    assert model.features[4].conv[1][0].weight[100, 0, 2, 1] == dw[2, 1, 100, 0]
    assert torch.equal(model.features[0][1].running_mean, keras_value(layers, "bn_conv1", "moving_mean"))
    assert torch.equal(model.features[18][0].weight,
                       keras_value(layers, "conv_1", "kernel").permute(3, 2, 0, 1))
    assert torch.equal(model.features[5].shortcut.weight,  # block_4: 32 -> 32, stride 1
                       keras_value(layers, "block_4_projected_inputs", "kernel").permute(3, 2, 0, 1))


def test_nested_model_layout_and_a_detector_trunk(tmp_path):
    layers = tao_resnet18(nclasses=1000)
    path = tmp_path / "nested.hdf5"
    write_keras_h5(path, layers, whole_model=True, nested_in="resnet18_nopool_bn")
    assert set(read_keras_weights(path)) == {layer for layer, weights in layers if weights}
    trunk = create_features("resnet18", (16,), all_projections=True)  # cut after layer3
    report = pre.load_pretrained(trunk, path, log=None)
    assert report.missing == [] and report.mismatched == []
    assert {name.split("/")[0] for name in report.unexpected} == {
        "block_4a_conv_1", "block_4a_bn_1", "block_4a_conv_2", "block_4a_bn_2", "block_4a_conv_shortcut",
        "block_4a_bn_shortcut", "block_4b_conv_1", "block_4b_bn_1", "block_4b_conv_2", "block_4b_bn_2",
        "block_4b_conv_shortcut", "block_4b_bn_shortcut", "predictions"}
    assert torch.equal(trunk.layer3[0].conv2.weight,
                       keras_value(layers, "block_3a_conv_2", "kernel").permute(3, 2, 0, 1))

    class Detector(nn.Module):  # a detector holds its trunk under a name, as detectnet_v2 does
        head_names = ("output_cov",)

        def __init__(self):
            super().__init__()
            self.backbone = create_features("resnet18", (16,), all_projections=True)
            self.output_cov = nn.Conv2d(256, 3, 1)

    detector = Detector()
    names = keras_layer_names(detector)
    assert names["block_2b_bn_1"] == "backbone.layer2.1.bn1" and names["output_cov"] == "output_cov"
    report = pre.load_pretrained(detector, path, log=None)
    assert report.missing_backbone == [] and report.heads_reinitialised == ["output_cov"]


def test_a_wrong_shape_is_reported_not_forced(tmp_path):
    layers = tao_resnet18(nclasses=4)
    layers = [(name, conv(3, 3, 64, 32) if name == "block_1b_conv_2" else weights) for name, weights in layers]
    path = tmp_path / "odd.hdf5"
    write_keras_h5(path, layers)
    model = create_model("resnet18", 4, all_projections=True)
    before = model.layer1[1].conv2.weight.clone()
    report = pre.load_pretrained(model, path, log=None)
    assert report.mismatched == [("layer1.1.conv2.weight", (64, 64, 3, 3), (32, 64, 3, 3))]
    assert "1 shape mismatches" in report.summary()
    assert torch.equal(model.layer1[1].conv2.weight, before)


def test_foreign_and_encrypted_files_fail_in_one_line(tmp_path):
    for suffix in (".tlt", ".etlt"):
        encrypted = tmp_path / f"resnet_18{suffix}"
        encrypted.write_bytes(RNG.bytes(256))
        with pytest.raises(TaoctlError, match=rf"encrypted \{suffix} models cannot be read; use TAO's "
                                              r"unencrypted Keras \.hdf5") as error:
            pre.load_pretrained(create_model("resnet18", 2), encrypted, log=None)
        assert "\n" not in str(error.value)
    path = tmp_path / "other.hdf5"
    write_keras_h5(path, [("dense_7", dense(8, 2))])
    with pytest.raises(TaoctlError, match="no layer of this Keras file has a TAO layer name of resnet18"):
        pre.load_pretrained(create_model("resnet18", 2), path, log=None)
    with h5py.File(tmp_path / "plain.h5", "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    with pytest.raises(TaoctlError, match="not Keras weights"):
        pre.load_pretrained(create_model("resnet18", 2), tmp_path / "plain.h5", log=None)


def test_keras_names_cover_vgg_and_mobilenet_v1():
    vgg = keras_layer_names(create_model("vgg16", 2, use_batch_norm=True))
    assert vgg["block_1a_conv_1"] == "features.0" and vgg["block_1a_bn_1"] == "features.1"
    # Five groups of conv, bn, relu (and a pool closing each group): block 5's third conv is the 41st layer.
    assert vgg["block_5c_conv_1"] == "features.40"
    assert sum(k.startswith("block_") and k.endswith("_conv_1") for k in vgg) == 13
    assert vgg["predictions"] == "classifier.1"
    v1 = keras_layer_names(create_model("mobilenet_v1", 2))
    assert v1["conv1"] == "features.0.0" and v1["conv1_bn"] == "features.0.1"
    assert v1["conv_dw_13"] == "features.13.0.0" and v1["conv_pw_13_bn"] == "features.13.1.1"


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_every_weighted_layer_has_one_tao_name(arch):
    model = create_model(arch, 2)
    names = keras_layer_names(model)
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    modules = [names[k] for k in names if k not in model.head_names]
    assert sorted(set(modules)) == sorted(weighted) and len(modules) == len(set(modules))


def test_darknet_names_follow_tao():
    names = keras_layer_names(create_model("darknet53", 2))
    assert names["conv1_bn"] == "stem.1" and names["conv6"] == "stage5.0.0"
    assert names["b3_conv8_2"] == "stage3.8.conv2.0" and names["b1_conv1_1_bn"] == "stage1.1.conv1.1"
    names = keras_layer_names(create_model("darknet19", 2))
    assert names["b1_conv1"] == "stage1.1.0" and names["b4_conv5_bn"] == "stage4.5.1"


def test_vgg_retained_head_reads_keras_flatten_order(tmp_path):
    # At 64 px VGG's last map is 512 x 2 x 2; Keras flattens it (H, W, C), PyTorch (C, H, W).
    model = create_model("vgg16", 3, input_image_size="3,64,64", retain_head=True)
    names = keras_layer_names(model)
    assert [names[k] for k in ("fc1", "fc2", "output_fc")] == ["classifier.0", "classifier.3", "classifier.6"]
    fc1 = dense(2048, 4096)
    path = tmp_path / "vgg16_head.hdf5"
    write_keras_h5(path, [("fc1", fc1)])
    report = pre.load_pretrained(model, path, log=None)
    assert report.loaded == ["classifier.0.weight", "classifier.0.bias"]
    kernel = torch.from_numpy(fc1[0][1])
    position, channel, out = 3, 100, 7  # (h, w) = (1, 1)
    assert model.classifier[0].weight[out, channel * 4 + position] == kernel[position * 512 + channel, out]


def test_prune_excluded_layers_take_tao_keras_names():
    torch.manual_seed(0)
    model = create_model("resnet18", 2, all_projections=True)
    report = prune_model(model, (3, 64, 64), threshold=0.9, granularity=8, min_filters=8,
                         excluded=["block_1a_conv_1", "block_3b_conv_1"])
    pruned = {name for name, _, _ in report.layers}
    assert "layer1.0.conv1" not in pruned and "layer3.1.conv1" not in pruned
    assert model.layer1[0].conv1.out_channels == 64 and model.layer3[1].conv1.out_channels == 256
    assert model.layer2[0].conv1.out_channels < 128  # the others are pruned at this threshold

    mobilenet = create_model("mobilenet_v2", 2)
    report = prune_model(mobilenet, (3, 64, 64), threshold=0.9, granularity=8, min_filters=8,
                         excluded=["block_2_expand"])
    assert mobilenet.features[3].conv[0][0].out_channels == 144
    assert mobilenet.features[2].conv[0][0].out_channels < 144
    with pytest.raises(TaoctlError, match="no layer named block_9z_conv_1 .*TAO's Keras names such as"):
        prune_model(create_model("resnet18", 2), (3, 64, 64), excluded=["block_9z_conv_1"])
