"""Every registered backbone builds, runs for 1- and 3-channel input, freezes and exports."""

import pytest
import torch
from torch import nn

from taoctl.engine.backbones import create_model, list_models, resolve_arch
from taoctl.errors import TaoctlError

# The biggest networks take seconds per step on 2 cores; smaller siblings of the same code
# (efficientnet_b0-b2, resnet50) keep them covered in the fast run.
SLOW = {"efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6",
        "efficientnet_b7", "resnet101"}
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in list_models()]
SIZE = 16

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32)])  # 16 px is TAO's smallest input
def test_forward_shape(name, channels, size):
    model = create_model(name, num_classes=7, input_image_size=f"{channels},{size},{size}")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert isinstance(model.head(), (nn.Linear, nn.Conv2d))
    assert model.head().weight.shape[0] == 7


@pytest.mark.parametrize("name", MODELS)
def test_freeze_blocks_stops_training(name):
    size = SIZE
    model = create_model(name, num_classes=3, input_image_size=f"3,{size},{size}",
                         freeze_blocks=[0, 1])
    frozen = {id(p) for i in (0, 1) for m in model.blocks()[i] for p in m.parameters()}
    assert frozen, "blocks 0 and 1 own parameters"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = model(torch.randn(2, 3, size, size)).logsumexp(1).sum()
    loss.backward()
    opt.step()
    after = model.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    for pid in frozen:
        assert torch.equal(before[names[pid]], after[names[pid]]), names[pid]
    # Frozen blocks' BatchNorm statistics do not move either; the head did learn.
    for i in (0, 1):
        for m in model.blocks()[i]:
            for bn in m.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    assert not bn.training
    (head_layer,) = model.head_names  # a classifier has one head
    head = f"{head_layer}.weight"
    assert not torch.equal(before[head], after[head])


def test_freeze_bn_keeps_statistics():
    model = create_model("resnet18", num_classes=2, freeze_bn=True).train()
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert torch.equal(before, model.bn1.running_mean)
    assert not model.bn1.weight.requires_grad


def test_resnet_options_change_structure():
    plain = create_model("resnet", 2, 18)
    proj = create_model("resnet", 2, 18, all_projections=True, use_pooling=False)
    assert plain.layer1[0].downsample is None
    assert all(b.downsample is not None for layer in (proj.layer1, proj.layer4) for b in layer)
    assert isinstance(proj.maxpool, nn.Identity) and proj.layer1[0].conv1.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    assert plain.eval().forward_features(x).shape == proj.eval().forward_features(x).shape
    mv2 = create_model("mobilenet_v2", 2, all_projections=True)
    assert isinstance(mv2.features[3].shortcut, nn.Conv2d)  # 24 -> 24, stride 1: a residual
    assert isinstance(mv2.features[2].shortcut, nn.Identity)  # 16 -> 24: no residual at all
    assert isinstance(create_model("mobilenet_v2", 2).features[3].shortcut, nn.Identity)
    nobn = create_model("resnet18", 2, use_batch_norm=False, use_bias=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nobn.modules())
    assert nobn.conv1.bias is not None


def test_options_reach_layers():
    m = create_model("resnet10", 2, activation={"activation_type": "leaky_relu",
                                                "activation_parameters": {"alpha": 0.2}},
                     batch_norm_config={"momentum": 0.9, "epsilon": 1e-3}, dropout=0.3)
    assert isinstance(m.relu, nn.LeakyReLU) and m.relu.negative_slope == 0.2
    assert m.bn1.eps == 1e-3 and m.bn1.momentum == pytest.approx(0.1)
    assert m.drop.p == 0.3
    assert isinstance(create_model("resnet10", 2, activation="swish").relu, nn.SiLU)


@pytest.mark.parametrize("arch, n_layers, message", [
    ("resnet", 42, "n_layers 42 is not available for resnet (10, 18, 34, 50, 101)"),
    ("resnet", None, "arch resnet needs n_layers (10, 18, 34, 50, 101)"),
    ("vgg", 11, "n_layers 11 is not available for vgg (16, 19)"),
    ("mobilenet_v2", 18, "n_layers 18 does not apply to mobilenet_v2"),
    ("resnet:18", 34, "contradicts n_layers 34"),
    ("resnett", 18, 'did you mean "resnet"'),
])
def test_unsupported_combinations_are_named(arch, n_layers, message):
    with pytest.raises(TaoctlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_model(arch, 2, n_layers)


@pytest.mark.parametrize("kwargs, message", [
    ({"input_image_size": "2,224,224"}, "channels must be 1 or 3"),
    ({"input_image_size": "3,8,224"}, "at least 16"),
    ({"input_image_size": "3x224"}, '"C,H,W"'),
    ({"activation": "swishh"}, 'did you mean "swish"'),
    ({"activation": {"activation_type": "relu", "activation_parameters": {"alpha": 1}}},
     "not used by relu"),
    ({"freeze_blocks": [9]}, "freeze_blocks 9 is not a block of resnet18 \\(blocks 0-4\\)"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(TaoctlError, match=message):
        create_model("resnet18", 2, **kwargs)


def test_tao_arch_spellings():
    assert resolve_arch("resnet:18") == "resnet18"
    assert resolve_arch("resnet", 50) == "resnet50"
    assert resolve_arch("ResNet18") == "resnet18"
    assert resolve_arch("mobilenet_v2", 0) == "mobilenet_v2"
    assert resolve_arch("cspdarknet_tiny") == "cspdarknet_tiny"
    assert resolve_arch("efficientnet:b1") == "efficientnet_b1"


def test_list_models_pattern():
    assert list_models("resnet*") == ["resnet10", "resnet101", "resnet18", "resnet34", "resnet50"]
    assert "mobilenet_v2" in list_models()


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", {}),
    ("mobilenet_v2", {}),
    ("efficientnet_b0", {}),  # squeeze-excitation, swish
    ("googlenet", {}),  # four-branch concat
    ("cspdarknet19", {"activation": "mish"}),
    ("vgg16", {"retain_head": True}),
])
def test_onnx_export_matches_torch(tmp_path, name, kwargs):
    """Through the engine's exporter, as every export subtask does (dynamo, dynamic batch, parity checked)."""
    from taoctl.engine import export

    model = create_model(name, num_classes=4, input_image_size="3,64,64", **kwargs).eval()
    adapter = export.ExportAdapter(module=model, input_names=("input",), output_names=("output",),
                                   dynamic_axes={"input": {0: export.BATCH}})
    torch.manual_seed(0)
    path = export.export_model(adapter, tmp_path / f"{name}.onnx", {"input": torch.randn(2, 3, 64, 64).numpy()}).onnx
    x = torch.randn(3, 3, 64, 64)  # another batch size than the export's
    got = export.run_onnx(path, x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    assert list(got) == ["output"] and got["output"].shape == (3, 4)
    assert abs(got["output"] - want).max() < 1e-3


@pytest.mark.slow  # 5-30 s per network on 2 cores
@pytest.mark.parametrize("name", ["resnet10", "mobilenet_v2", "efficientnet_lite0", "googlenet",
                                  "cspdarknet19", "squeezenet", "alexnet"])
def test_dynamo_onnx_export(tmp_path, name):
    """The exporter taoctl's export subtasks use (dynamo, dynamic batch)."""
    import onnxruntime as ort

    model = create_model(name, 4, input_image_size="1,32,32").eval()
    x = torch.randn(3, 1, 32, 32)
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                                external_data=False, verbose=False)
    program.save(str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert abs(got - model(x).numpy()).max() < 1e-3


def test_retain_head_keeps_original_layers():
    vgg = create_model("vgg16", 3, retain_head=True)
    assert [m.out_features for m in vgg.classifier if isinstance(m, nn.Linear)] == [4096, 4096, 3]
    assert vgg.head_names == ("classifier.6",) and len(vgg.block_names) == 8  # 1-5 convs, 6-7 fc
    squeeze = create_model("squeezenet", 3, retain_head=True)
    assert isinstance(squeeze.head(), nn.Conv2d)
    assert squeeze.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert isinstance(create_model("vgg16", 3).head(), nn.Linear)


def test_original_defaults_follow_the_network():
    vgg = create_model("vgg16", 3)
    assert vgg.features[0].bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vgg.modules())
    vgg_bn = create_model("vgg16", 3, use_batch_norm=True, use_bias=False, use_pooling=False)
    assert vgg_bn.features[0].bias is None
    assert not any(isinstance(m, nn.MaxPool2d) for m in vgg_bn.modules())
    assert isinstance(create_model("darknet19", 3).stem[2], nn.LeakyReLU)
    assert isinstance(create_model("efficientnet_b0", 3).features[0][2], nn.SiLU)
    assert isinstance(create_model("efficientnet_lite0", 3).features[0][2], nn.ReLU6)


@pytest.mark.parametrize("ours, theirs, kwargs", [
    ("resnet50", "resnet50", {}),
    ("vgg16", "vgg16_bn", {"use_batch_norm": True}),
    ("mobilenet_v2", "mobilenet_v2", {}),
    ("efficientnet_b0", "efficientnet_b0", {}),
])
def test_same_network_as_torchvision(ours, theirs, kwargs):
    """torchvision's state dict loads strictly and both compute the same function."""
    from taoctl.engine.tvcompat import import_torchvision

    reference = getattr(import_torchvision().models, theirs)().eval()
    model = create_model(ours, 1000, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    if theirs.startswith("vgg"):  # TAO's VGG head differs; compare the conv trunk
        model.features.load_state_dict(reference.features.state_dict(), strict=True)
        model, reference = model.features, reference.features
    else:
        model.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-4)
