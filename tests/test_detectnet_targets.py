"""detectnet_v2 targets (bbox_rasterizer_config) and loss (cost_function_config)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from taoctl.errors import TaoctlError
from taoctl.tasks.detectnet_v2 import encoding
from taoctl.tasks.detectnet_v2.loss import DetectNetLoss
from taoctl.tasks.detectnet_v2.proto import experiment_pb2
from taoctl.tasks.detectnet_v2.targets import ClassRasterConfig, rasterize, rasterizer_configs

WIDTH, HEIGHT = 416, 320
GRID_H, GRID_W = HEIGHT // encoding.STRIDE, WIDTH // encoding.STRIDE
RECIPE = ClassRasterConfig(cov_center_x=0.5, cov_center_y=0.5, cov_radius_x=0.5, cov_radius_y=0.5, bbox_min_radius=0.6)
CLASSES = ["rbc", "wbc", "platelets"]


def _bccd_like(seed: int, count: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of BCCD's sizes at 416x320 (rbc ~65 px, wbc ~110, platelets ~25), laid on a jittered lattice
    so that neighbours touch but do not overlap much, as blood cells do."""
    rng = np.random.default_rng(seed)
    sizes = {0: (55, 75), 1: (95, 125), 2: (20, 30)}
    boxes, classes = [], []
    slots = [(x, y) for y in range(20, 260, 80) for x in range(15, 360, 85)]
    for i in rng.permutation(len(slots))[:count]:
        cls = int(rng.choice([0, 0, 0, 1, 2]))
        side = rng.uniform(*sizes[cls], 2)
        x, y = slots[i] + rng.uniform(-10, 10, 2)
        boxes.append([x, y, min(x + side[0], WIDTH - 1), min(y + side[1], HEIGHT - 1)])
        classes.append(cls)
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(classes)


def _decode(targets: dict, image: int) -> list[tuple[int, np.ndarray]]:
    """(class, box) of every cell with coverage > 0.5, decoded as DeepStream's parser does."""
    cx, cy = encoding.cell_centres(GRID_H, GRID_W)
    out = []
    cov = targets["cov"][image].numpy()
    bbox = targets["bbox"][image].numpy()
    for cls, row, col in zip(*np.nonzero(cov > 0.5)):
        l, t, r, b = bbox[4 * cls:4 * cls + 4, row, col] * encoding.BBOX_NORM
        out.append((int(cls), np.array([cx[col] - l, cy[row] - t, cx[col] + r, cy[row] + b])))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _greedy_nms(detections, threshold=0.5):
    kept = []
    for cls, box in detections:
        if all(c != cls or _iou(box, k) < threshold for c, k in kept):
            kept.append((cls, box))
    return kept


def test_targets_decode_back_to_the_boxes():
    boxes, classes = zip(*(_bccd_like(seed) for seed in range(4)))
    targets = rasterize(list(boxes), list(classes), 3, GRID_H, GRID_W, [RECIPE] * 3, deadzone_radius=0.5)
    assert targets["cov"].shape == (4, 3, GRID_H, GRID_W) and targets["bbox"].shape == (4, 12, GRID_H, GRID_W)
    for image in range(4):
        found = _greedy_nms(_decode(targets, image))
        truth = list(zip(classes[image].tolist(), boxes[image].numpy()))
        for cls, box in truth:
            best = max((_iou(box, k) for c, k in found if c == cls), default=0.0)
            assert best > 0.9, (cls, box)
        assert len(found) == len(truth)


def test_every_object_gets_its_centre_cell_and_the_nearer_object_wins():
    platelet = torch.tensor([[200.0, 100.0, 212.0, 110.0]])  # 12 x 10 px: smaller than a cell
    targets = rasterize([platelet], [torch.tensor([0])], 1, GRID_H, GRID_W, [RECIPE], 0.5)
    assert targets["cov"][0, 0, 100 // 16, 206 // 16] == 1
    # Two overlapping cells whose ellipses (filling each box) overlap: a cell both cover encodes the box
    # whose centre is nearer.
    pair = torch.tensor([[96.0, 96.0, 160.0, 160.0], [140.0, 96.0, 204.0, 160.0]])
    filling = ClassRasterConfig(0.5, 0.5, 1.0, 1.0, 0.6)
    targets = rasterize([pair], [torch.tensor([0, 0])], 1, GRID_H, GRID_W, [filling], 0.0)
    rows, cols = np.nonzero(targets["cov"][0, 0].numpy() > 0.5)
    decoded = [box for _, box in _decode(targets, 0)]
    centres = ((pair[:, :2] + pair[:, 2:]) / 2).numpy()
    contested = 0
    for row, col, box in zip(rows, cols, decoded):
        cell = np.array([(col + 0.5) * 16, (row + 0.5) * 16])
        distances = np.linalg.norm((cell - centres) / 32.0, axis=1)  # semi-axes: 32 px
        contested += int((distances <= 1).all())
        np.testing.assert_allclose(box, pair[int(np.argmin(distances))].numpy(), atol=1e-3)
    assert contested >= 2


def test_dead_zone_and_tao_sample_values():
    box = torch.tensor([[64.0, 64.0, 192.0, 192.0]])  # 128 px: 8 cells, centre at cell boundary 8
    recipe = rasterize([box], [torch.tensor([0])], 1, GRID_H, GRID_W, [RECIPE], 0.5)
    covered = int(recipe["cov"].sum())
    ignored = int((recipe["cov_weight"] == 0).sum())
    # Ellipse semi-axes 0.25 * 128 px = 2 cells: the 4 x 4 cells around the centre; ring out to 3 cells.
    assert covered == 12 and ignored > 0
    assert torch.equal(recipe["bbox_weight"], recipe["cov"])
    assert (recipe["cov_weight"][recipe["cov"] > 0] == 1).all()
    # TAO's pedestrian sample: cov_radius 1.0 fills the box, deadzone 0.4 adds no ring beyond it.
    pedestrian = ClassRasterConfig(0.5, 0.5, 1.0, 1.0, 1.0)
    full = rasterize([box], [torch.tensor([0])], 1, GRID_H, GRID_W, [pedestrian], 0.4)
    assert int(full["cov"].sum()) > 40 and int((full["cov_weight"] == 0).sum()) == 0
    # Nothing drawn outside the object's class channel; empty images give empty targets.
    empty = rasterize([box, torch.zeros(0, 4)], [torch.tensor([1]), torch.zeros(0, dtype=torch.long)], 2,
                      GRID_H, GRID_W, [RECIPE] * 2, 0.5)
    assert empty["cov"][0, 0].sum() == 0 and empty["cov"][0, 1].sum() == covered and empty["cov"][1].sum() == 0


def test_rasterizer_configs_from_the_spec():
    spec = experiment_pb2.Experiment()
    raster = spec.bbox_rasterizer_config
    for name, radius in (("rbc", 0.5), ("WBC", 0.4)):
        entry = raster.target_class_config[name]
        entry.cov_center_x = entry.cov_center_y = 0.5
        entry.cov_radius_x = entry.cov_radius_y = radius
        entry.bbox_min_radius = 0.6
    raster.deadzone_radius = 0.5
    configs, deadzone = rasterizer_configs(spec, ["wbc", "rbc"])
    assert [c.cov_radius_x for c in configs] == pytest.approx([0.4, 0.5]) and deadzone == 0.5
    with pytest.raises(TaoctlError, match="bbox_rasterizer_config.target_class_config has no entry for .*platelets"):
        rasterizer_configs(spec, ["rbc", "platelets"])


# --- loss ----------------------------------------------------------------------------------------

def _cost_config(bbox_initial=10.0, bbox_target=1.0, class_weights=(1.0, 1.0, 1.0), autoweighting=False):
    config = experiment_pb2.Experiment().cost_function_config
    for name, weight in zip(CLASSES, class_weights):
        target = config.target_classes.add(name=name, class_weight=weight, coverage_foreground_weight=0.05)
        target.objectives.add(name="cov", initial_weight=1.0, weight_target=1.0)
        target.objectives.add(name="bbox", initial_weight=bbox_initial, weight_target=bbox_target)
    config.enable_autoweighting = autoweighting
    config.max_objective_weight = 0.9999
    config.min_objective_weight = 0.0001
    return config


def _targets(batch=2):
    boxes, classes = zip(*(_bccd_like(seed) for seed in range(batch)))
    return rasterize(list(boxes), list(classes), 3, GRID_H, GRID_W, [RECIPE] * 3, 0.5)


def test_perfect_prediction_costs_less_and_gradients_flow():
    targets = _targets()
    loss = DetectNetLoss(_cost_config(), CLASSES)
    perfect_logits = (targets["cov"] * 2 - 1) * 12
    perfect, parts = loss(perfect_logits, targets["bbox"].clone(), targets, from_logits=True)
    noisy_logits = (perfect_logits + torch.randn_like(perfect_logits) * 6).requires_grad_()
    noisy_bbox = (targets["bbox"] + torch.randn_like(targets["bbox"]) * 0.3).requires_grad_()
    noisy, noisy_parts = loss(noisy_logits, noisy_bbox, targets, from_logits=True)
    assert perfect < 1e-3 < noisy and set(parts) == {"cov_loss", "bbox_loss"}
    assert noisy_parts["cov_loss"] > parts["cov_loss"] and noisy_parts["bbox_loss"] > parts["bbox_loss"]
    noisy.backward()
    assert noisy_logits.grad.abs().sum() > 0 and noisy_bbox.grad.abs().sum() > 0
    # Probabilities (the deployed graph's output) give the same cost as logits.
    from_probabilities, _ = loss(torch.sigmoid(noisy_logits.detach()), noisy_bbox.detach(), targets)
    assert from_probabilities.item() == pytest.approx(noisy.item(), rel=1e-3)
    # Box regression counts only where bbox_weight is 1.
    far_off = targets["bbox"] + (1 - targets["bbox_weight"]).repeat_interleave(4, dim=1) * 100
    assert loss(perfect_logits, far_off, targets, from_logits=True)[0] == pytest.approx(perfect.item(), abs=1e-6)


def test_objective_weights_follow_progress_and_class_weights_scale():
    loss = DetectNetLoss(_cost_config(bbox_initial=10.0, bbox_target=1.0), CLASSES)
    assert loss.objective_weights[0].tolist() == pytest.approx([1 / 11, 10 / 11])
    loss.set_progress(0.5)
    assert loss.objective_weights[0].tolist() == pytest.approx([(1 / 11 + 0.5) / 2, (10 / 11 + 0.5) / 2])
    loss.set_progress(1.0)
    assert loss.objective_weights[0].tolist() == pytest.approx([0.5, 0.5])
    targets = _targets()
    logits = (targets["cov"] * 2 - 1) * 20
    bbox = targets["bbox"].clone()
    bbox[:, 0:4] += 1.0  # only rbc's boxes are wrong
    equal, _ = DetectNetLoss(_cost_config(), CLASSES)(logits, bbox, targets, from_logits=True)
    heavy_rbc, _ = DetectNetLoss(_cost_config(class_weights=(4.0, 1.0, 1.0)), CLASSES)(
        logits, bbox, targets, from_logits=True)
    # Class weights are normalised to mean 1: rbc weighs 4 / 2 = 2.
    assert heavy_rbc.item() == pytest.approx(2 * equal.item(), rel=1e-4)
    with pytest.raises(TaoctlError, match=r"target_classes\[rbc\].objectives"):
        config = _cost_config()
        del config.target_classes[0].objectives[1]
        DetectNetLoss(config, CLASSES)


def test_autoweighting_rebalances_each_epoch():
    loss = DetectNetLoss(_cost_config(bbox_initial=1.0, bbox_target=1.0, autoweighting=True), CLASSES)
    targets = _targets()
    logits = torch.zeros_like(targets["cov"])
    bbox = targets["bbox"] + 2.0  # a bbox cost far above the coverage cost
    loss(logits, bbox, targets, from_logits=True)
    loss.set_progress(0.5)  # the schedule does not apply with autoweighting
    assert loss.objective_weights[0].tolist() == pytest.approx([0.5, 0.5])
    loss.end_epoch()
    cov_weight, bbox_weight = loss.objective_weights[0].tolist()
    assert cov_weight > bbox_weight and cov_weight + bbox_weight == pytest.approx(1.0, abs=1e-3)
    assert 0.0001 <= bbox_weight <= 0.9999


def test_one_image_overfits():
    """50 steps of a 1x1 conv on fixed features drive the cost of one image's targets down."""
    torch.manual_seed(0)
    targets = _targets(batch=1)
    features = torch.randn(1, 32, GRID_H, GRID_W)
    head = torch.nn.Conv2d(32, 3 + 12, 1)
    loss = DetectNetLoss(_cost_config(), CLASSES)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    history = []
    for step in range(50):
        loss.set_progress(step / 49)
        out = head(features)
        total, _ = loss(out[:, :3], out[:, 3:], targets, from_logits=True)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert history[-1] < 0.3 * history[0]
