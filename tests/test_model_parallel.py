"""Model parallelism: TAO's split rule, and every backbone running split across devices.

Without two GPUs, the cross-device check runs on CPU and the ``meta`` device: a dispatch mode
fails any operation whose tensors sit on different devices (other than the moves between
units), which is exactly what a residual add or concat cut in two would do on two GPUs.
"""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from taoctl.engine.backbones import create_model
from taoctl.engine.model_parallel import assign_segments, pipeline_units, spans_devices, split_model
from taoctl.engine.modelfile import load_model, load_weights_into
from taoctl.engine.trainer import Trainer
from taoctl.errors import TaoctlError

from test_backbones import MODELS

MOVES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


class SameDeviceCheck(TorchDispatchMode):
    """Fails any operation (other than a move) that reads tensors from more than one device.

    A move out of ``meta`` (which holds no data) gives zeros of the right shape on the target.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = kwargs.get("device")
        if func is torch.ops.aten._to_copy.default and args[0].is_meta and target is not None \
                and torch.device(target).type != "meta":
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=target)
        if func not in MOVES:
            devices = set()
            torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: devices.add(t.device), (args, kwargs))
            assert len(devices) <= 1, f"{func} mixes devices {devices}"
        return func(*args, **kwargs)


def test_assign_segments_follows_tao_rounding():
    # TAO: boundaries at round(cumsum(f) / sum(f) * layers); a unit goes where its first layer falls.
    assert assign_segments([1] * 8, [0.5, 0.5]) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert assign_segments([1] * 8, [1, 3]) == [0, 0, 1, 1, 1, 1, 1, 1]
    assert assign_segments([3, 3, 1, 1], [0.5, 0.5]) == [0, 0, 1, 1]
    assert assign_segments([1] * 8, [0.125] * 8) == list(range(8))
    with pytest.raises(TaoctlError, match="must all be > 0"):
        assign_segments([1, 1], [0.5, 0.0])


def test_units_keep_blocks_whole_and_open_sequentials():
    model = create_model("resnet18", num_classes=3, input_image_size="3,32,32")
    names = [name for name, _ in pipeline_units(model)[0]]
    # layer1 is an nn.Sequential of BasicBlocks: each block is a unit, never its convs apart.
    assert "layer1.0" in names and "layer1.1" in names
    assert not any(name.startswith("layer1.0.") for name in names)
    assert names[0] == "conv1" and "fc" in names


@pytest.mark.parametrize("name", MODELS)
def test_every_backbone_trains_split_across_devices(name):
    model = create_model(name, num_classes=3, input_image_size="3,32,32")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    segments = split_model(model, [0.5, 0.5], ["cpu", "meta"], torch.zeros(1, 3, 32, 32))
    assert [len(s.units) > 0 for s in segments] == [True, True]
    assert spans_devices(model)
    assert sum(s.parameters for s in segments) == sum(p.numel() for p in model.parameters())
    model.train()
    with SameDeviceCheck():
        out = model(torch.randn(2, 3, 32, 32))
        out.logsumexp(1).sum().backward()
    assert out.device.type == "meta"  # the head sits on the second device
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable), "gradients reach the first device's layers"
    first = {n for n, p in model.named_parameters() if p.device.type == "cpu"}
    assert first and all(torch.equal(model.state_dict()[k], reference[k]) for k in first if k in reference)


def test_split_on_one_device_type_matches_the_whole_model():
    torch.manual_seed(0)
    whole = create_model("mobilenet_v2", num_classes=4, input_image_size="3,32,32")
    split = create_model("mobilenet_v2", num_classes=4, input_image_size="3,32,32")
    split.load_state_dict(whole.state_dict())
    segments = split_model(split, [1, 1, 2], ["cpu", "cpu", "cpu"], torch.zeros(1, 3, 32, 32))
    assert segments[0].units[0] == "features.0.0" and segments[2].units[-1].startswith("classifier")
    x = torch.randn(3, 3, 32, 32)
    outputs = []
    for net in (whole, split):
        torch.manual_seed(1)  # the same dropout mask
        net.train()
        outputs.append(net(x))
        outputs[-1].logsumexp(1).sum().backward()
    torch.testing.assert_close(outputs[1], outputs[0])
    for (_, a), (_, b) in zip(whole.named_parameters(), split.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_cut_through_a_block_would_be_caught():
    """The check above can fail: a residual whose two branches sit on different devices."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) + self.b(x)

    model = Residual()
    split_model(model, [1, 1], ["cpu", "meta"], torch.zeros(1, 4))  # the root's children: a, b
    with SameDeviceCheck(), pytest.raises(AssertionError, match="mixes devices"):
        model(torch.zeros(2, 4))


def test_fraction_too_small_for_any_layer_is_one_line_and_moves_nothing():
    model = create_model("resnet10", num_classes=2, input_image_size="3,32,32")
    with pytest.raises(TaoctlError, match=r"leaves meta without layers"):
        split_model(model, [0.999, 0.001], ["cpu", "meta"], torch.zeros(1, 3, 32, 32))
    assert not spans_devices(model)


def test_a_container_with_its_own_tensors_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model.register_buffer("scale", torch.ones(4))  # the root's own tensor: no unit would carry it
    with pytest.raises(TaoctlError, match="its root holds tensors of its own"):
        split_model(model, [1, 1], ["cpu", "meta"], torch.zeros(1, 4))


@pytest.mark.parametrize("devices", [
    ("cpu", "cpu"),
    pytest.param(("cuda:0", "cpu"), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
])
def test_trainer_keeps_the_split_and_saves_a_whole_model(tmp_path, devices):
    torch.manual_seed(0)
    model = create_model("resnet10", num_classes=3, input_image_size="3,16,16")
    split_model(model, [1, 1], devices, torch.zeros(1, 3, 16, 16))
    placement = {n: p.device for n, p in model.named_parameters()}
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 3, (16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)

    def loss_fn(net, batch):
        logits = net(batch[0])
        return nn.functional.cross_entropy(logits, batch[1].to(logits.device)), {}

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), loader, loss_fn, tmp_path,
                      2, "split", {}, device=torch.device(devices[0]), progress_interval_s=1e9)
    trained = trainer.train()
    assert {n: p.device for n, p in trained.named_parameters()} == placement
    whole = create_model("resnet10", num_classes=3, input_image_size="3,16,16")
    load_weights_into(whole, load_model(tmp_path / "weights" / "split_002.tlt"))
    trained.eval(), whole.eval()
    with torch.no_grad():
        torch.testing.assert_close(trained(images).cpu(), whole(images), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_step_matches_one_gpu():
    torch.manual_seed(0)
    whole = create_model("resnet18", num_classes=5, input_image_size="3,64,64").cuda(0)
    split = create_model("resnet18", num_classes=5, input_image_size="3,64,64")
    split.load_state_dict(whole.state_dict())
    split_model(split, [0.5, 0.5], ["cuda:0", "cuda:1"], torch.zeros(1, 3, 64, 64))
    x = torch.randn(4, 3, 64, 64, device="cuda:0")
    outputs = []
    for net in (whole, split):
        net.train()
        outputs.append(net(x))
        outputs[-1].logsumexp(1).sum().backward()
    assert outputs[1].device == torch.device("cuda:1")
    torch.testing.assert_close(outputs[1].to("cuda:0"), outputs[0], rtol=1e-4, atol=1e-4)
    for (_, a), (_, b) in zip(whole.named_parameters(), split.named_parameters()):
        torch.testing.assert_close(b.grad.to("cuda:0"), a.grad, rtol=1e-3, atol=1e-4)
