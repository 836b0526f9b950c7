"""torchvision imports through taoctl.engine.tvcompat, and its stand-in nms is exact."""

import subprocess
import sys

import pytest
import torch

from taoctl.engine import tvcompat


def brute_force_nms(boxes, scores, threshold):
    """The definition, in plain Python floats: keep the best box, drop those overlapping it."""
    boxes = boxes.tolist()
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    keep, dropped = [], set()
    for n, i in enumerate(order):
        if i in dropped:
            continue
        keep.append(i)
        dropped.update(j for j in order[n + 1:] if iou(boxes[i], boxes[j]) > threshold)
    return keep


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    # Clustered around a few centres so that many boxes overlap.
    centres = torch.rand(4, 2, generator=g) * 100
    xy = centres[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 8
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


@pytest.fixture(scope="module")
def torchvision():
    return tvcompat.import_torchvision()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_nms_matches_brute_force(torchvision, seed, threshold):
    boxes, scores = random_boxes(150, seed)
    want = brute_force_nms(boxes, scores, threshold)
    assert tvcompat.nms(boxes, scores, threshold).tolist() == want
    got = torchvision.ops.nms(boxes, scores, threshold)
    assert got.dtype == torch.int64 and got.tolist() == want


def test_batched_nms_is_per_class(torchvision):
    boxes, scores = random_boxes(120, 7)
    classes = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(1))
    got = set(torchvision.ops.batched_nms(boxes, scores, classes, 0.5).tolist())
    want = set()
    for c in range(3):
        idx = (classes == c).nonzero().flatten()
        want.update(idx[brute_force_nms(boxes[idx], scores[idx], 0.5)].tolist())
    assert got == want


def test_nms_edge_cases():
    assert tvcompat.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    same = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert tvcompat.nms(same, torch.tensor([0.1, 0.9, 0.5]), 0.5).tolist() == [1]


def test_box_ops_and_roi_align_work(torchvision):
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15]])
    iou = torchvision.ops.box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(25 / 175)
    x = torch.arange(16.0).view(1, 1, 4, 4).requires_grad_()
    out = torchvision.ops.roi_align(x, torch.tensor([[0, 0.0, 0, 4, 4]]), (2, 2),
                                    sampling_ratio=1, aligned=True)
    assert out.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # means of each 2x2 quarter
    out.sum().backward()
    assert x.grad.sum().item() == pytest.approx(4.0)


def test_models_build(torchvision):
    model = torchvision.models.mobilenet_v2(num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_fallback_decision():
    def loads():
        return None

    def fails():
        raise OSError("undefined symbol")

    # Compiled ops already registered: never register ours, never even try to load.
    assert tvcompat.fallback_needed(lambda name: True, fails) is False
    # Not yet loaded, but torchvision's library loads and defines them: use the real ops.
    registered = []
    assert tvcompat.fallback_needed(lambda name: bool(registered),
                                    lambda: registered.append(1)) is False
    # Library fails to load (this machine), or loads without nms: fall back.
    assert tvcompat.fallback_needed(lambda name: False, fails) is True
    assert tvcompat.fallback_needed(lambda name: False, loads) is True


def test_plain_import_fails_here_but_ours_works():
    """Documents why the module exists; if torchvision ever matches torch, the fallback stays off."""
    code = ("from taoctl.engine import tvcompat; tv = tvcompat.import_torchvision(); "
            "print(tv.__version__, tvcompat.uses_fallback())")
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr
    plain = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True,
                           text=True)
    uses_fallback = ours.stdout.split()[-1] == "True"
    assert uses_fallback == (plain.returncode != 0)
