"""Engine pruning: TAO's scoring, the BatchNorm-folded criterion and the least-squares refit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from taoctl.engine.backbones import create_model
from taoctl.engine.pruning import prune_classifier_inputs, prune_model, reconstruct
from taoctl.errors import TaoctlError


def _two_layer_net(norms, gammas=None) -> nn.Module:
    """conv(3->8) + BN + ReLU, then a 1x1 conv reading all 8 channels, pooled to 2 outputs."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        direction = torch.randn(8, 3 * 9, generator=torch.Generator().manual_seed(0))
        direction /= direction.norm(dim=1, keepdim=True)
        net[0].weight.copy_((direction * torch.tensor(norms, dtype=torch.float)[:, None]).reshape(8, 3, 3, 3))
        if gammas is not None:
            net[1].weight.copy_(torch.tensor(gammas, dtype=torch.float))
    return net.eval()


def _kept_norms(net) -> list[float]:
    return sorted(round(float(n), 3) for n in net[0].weight.detach().flatten(1).norm(dim=1))


def test_max_and_l2_normalizers_follow_tao():
    norms = [1, 2, 3, 4, 5, 6, 7, 8]
    net = _two_layer_net(norms)
    # max: norm / 8 > 0.7 keeps 6, 7, 8.
    prune_model(net, (3, 8, 8), threshold=0.7, normalizer="max", granularity=1, min_filters=1)
    assert _kept_norms(net) == [6.0, 7.0, 8.0]
    # TAO's L2: norm / ||norms|| * count = norm * 8 / 14.28 > 3.0 keeps norms >= 5.4, i.e. 6, 7, 8.
    net = _two_layer_net(norms)
    prune_model(net, (3, 8, 8), threshold=3.0, normalizer="L2", granularity=1, min_filters=1)
    assert _kept_norms(net) == [6.0, 7.0, 8.0]


def test_granularity_and_min_filters_round_up():
    net = _two_layer_net([1, 2, 3, 4, 5, 6, 7, 8])
    prune_model(net, (3, 8, 8), threshold=0.7, normalizer="max", granularity=4, min_filters=1)
    assert _kept_norms(net) == [5.0, 6.0, 7.0, 8.0]
    net = _two_layer_net([1, 2, 3, 4, 5, 6, 7, 8])
    prune_model(net, (3, 8, 8), threshold=0.99, normalizer="max", granularity=1, min_filters=2)
    assert _kept_norms(net) == [7.0, 8.0]


def test_named_heads_keep_their_outputs_and_lose_inputs():
    net = _two_layer_net([1, 2, 3, 4, 5, 6, 7, 8])
    with torch.no_grad():
        net[3].weight[1] *= 0.01  # an output filter the threshold would drop
    unprotected = copy.deepcopy(net)
    net.head_names = ("3",)  # the model declares its output layer; prune_model takes it from there
    prune_model(net, (3, 8, 8), threshold=0.7, granularity=1, min_filters=1)
    assert (net[3].in_channels, net[3].out_channels) == (3, 2)
    prune_model(unprotected, (3, 8, 8), threshold=0.7, granularity=1, min_filters=1)
    assert (unprotected[3].in_channels, unprotected[3].out_channels) == (3, 1)
    with pytest.raises(TaoctlError, match="the model has no output layer 9"):
        prune_model(net, (3, 8, 8), output_layers=["9"])


def test_bn_folded_criterion_sees_what_batchnorm_does():
    # Equal kernel norms: plain L2 cannot tell the channels apart; BatchNorm's scale (gamma) can.
    gammas = [0.01, 0.02, 0.03, 0.04, 1.0, 1.1, 1.2, 1.3]
    net = _two_layer_net([1.0] * 8, gammas)
    report = prune_model(net, (3, 8, 8), threshold=0.5, granularity=1, min_filters=1)
    assert report.layers == [] and net[0].out_channels == 8
    report = prune_model(net, (3, 8, 8), threshold=0.5, granularity=1, min_filters=1, criterion="L2_bn")
    assert net[0].out_channels == 4 and sorted(net[1].weight.tolist()) == pytest.approx(gammas[4:])
    assert report.kept_outputs["0"] == [4, 5, 6, 7]
    with pytest.raises(TaoctlError, match="unknown criterion"):
        prune_model(net, (3, 8, 8), criterion="taylor")


def test_refit_recovers_what_pruned_channels_carried():
    # Channels 4-7 are 0.1 x channels 0-3, so the next layer can read them through 0-3: plain pruning
    # loses their share of the output, the least-squares refit gets it back exactly.
    torch.manual_seed(0)  # with the global state other tests leave, the plain loss can fall under 1e-2
    net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight[:4] /= net[0].weight[:4].flatten(1).norm(dim=1)[:, None, None, None]
        net[0].weight[4:] = 0.1 * net[0].weight[:4]
    original = copy.deepcopy(net)
    report = prune_model(net, (3, 6, 6), threshold=0.5, granularity=1, min_filters=1)
    assert net[0].out_channels == 4 and report.kept_outputs["0"] == [0, 1, 2, 3]
    calibration, held_out = torch.randn(32, 3, 6, 6), torch.randn(8, 3, 6, 6)
    assert not torch.allclose(net(held_out), original(held_out), atol=1e-2)
    refit = reconstruct(original, net, calibration, report.kept_outputs, ridge=1e-9)
    assert refit == ["1"]
    assert torch.allclose(net(held_out), original(held_out), atol=1e-4)


def test_refit_brings_a_pruned_mobilenet_closer_to_the_original():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=3, input_image_size="3,32,32").eval()
    with torch.no_grad():  # fresh weights have near-equal filter norms: make every other filter weak
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[::2] *= 0.1
        for m in model.modules():  # non-trivial BatchNorm statistics, as after training
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    original = copy.deepcopy(model)
    report = prune_model(model, (3, 32, 32), threshold=0.5, granularity=8, min_filters=8)
    calibration, held_out = torch.randn(64, 3, 32, 32), torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        before = (model(held_out) - original(held_out)).pow(2).mean()
        refit = reconstruct(original, model, calibration, report.kept_outputs)
        after = (model(held_out) - original(held_out)).pow(2).mean()
    # The head keeps its 3 outputs; its inputs were pruned with the layer feeding it, so it is refit last.
    assert model.classifier[1].out_features == 3 and model.classifier[1].in_features < 1280
    assert refit[-1] == "classifier.1"
    assert after < 0.5 * before


def _pooled_classifier(spatial: int = 1) -> nn.Module:
    """conv(3->16) + BN + ReLU, pooled to ``spatial`` x ``spatial``, flattened into a 2-class linear head."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(spatial), nn.Flatten(), nn.Linear(16 * spatial * spatial, 2))
    with torch.no_grad():
        net[0].weight /= net[0].weight.flatten(1).norm(dim=1)[:, None, None, None]  # norms cannot rank them
        net[5].weight.mul_(0.01)
        net[5].weight[:, :4] = torch.tensor([[2.0, -1.5, 1.0, -2.5], [-1.0, 2.0, -2.0, 1.5]])
        net[0].weight[5] = 0  # channel 5 is a constant 3 after BatchNorm and ReLU: it only shifts the logits
        net[1].bias[5] = 3.0
        net[5].weight[:, 5] = torch.tensor([5.0, -4.0])
    return net.eval()


def test_classifier_inputs_ranked_by_their_effect_on_the_logits():
    net = _pooled_classifier()
    original = copy.deepcopy(net)
    images, held_out = torch.randn(64, 3, 8, 8), torch.randn(16, 3, 8, 8)
    assert prune_classifier_inputs(net, "5", images, 1.0, granularity=1, min_filters=1) is None
    assert prune_classifier_inputs(net, "5", images, 0.25, granularity=1, min_filters=1) == ("0", 16, 4)
    assert net[0].out_channels == net[1].num_features == net[5].in_features == 4
    # the four heavily weighted channels stay; the constant one (large weight, no spread) goes, and
    # its contribution moves into the bias, so the logits stay close
    assert torch.equal(net[5].weight, original[5].weight[:, :4])
    with torch.no_grad():
        dropped_mean = original[:5](images)[:, 4:].mean(0)
        assert torch.allclose(net[5].bias, original[5].bias + original[5].weight[:, 4:] @ dropped_mean, atol=1e-5)
        assert (net(held_out) - original(held_out)).abs().max() < 0.05 * original(held_out).abs().max()


def test_classifier_input_pruning_needs_a_pooled_linear_head():
    images = torch.randn(8, 3, 8, 8)
    with pytest.raises(TaoctlError, match="not one per channel"):
        prune_classifier_inputs(_pooled_classifier(spatial=2), "5", images, 0.25, granularity=1, min_filters=1)
    with pytest.raises(TaoctlError, match="no linear layer"):
        prune_classifier_inputs(_pooled_classifier(), "0", images, 0.25)
    with pytest.raises(TaoctlError, match=r"not in \(0, 1\]"):
        prune_classifier_inputs(_pooled_classifier(), "5", images, 1.5)
