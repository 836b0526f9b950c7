"""DetectNet_v2's cost from ``cost_function_config``: per class, a coverage and a box objective.

TAO's meaning is kept (TAO TF1's ``cost_function`` and ``cost_auto_weight_hook``):
- ``class_weight``: each class's share of the total, normalised over the classes (TAO divides by
  their sum; here by their mean, so all-equal weights are 1 each and the scale does not depend on
  the number of classes).
- ``coverage_foreground_weight`` w: coverage cells with an object weigh w, the others 1 - w (TAO's
  weighted cross-entropy); both are doubled so that w = 0.5 weighs every cell 1.
- ``objectives`` "cov" and "bbox": per class, weights normalised to sum to 1 (as TAO); without
  ``enable_autoweighting`` each weight moves linearly from ``initial_weight`` to ``weight_target``
  as training progresses (:meth:`DetectNetLoss.set_progress`); with it, at the end of every epoch
  (:meth:`DetectNetLoss.end_epoch`) each objective's weight becomes ``weight_target`` divided by its
  mean cost over the epoch, normalised, and clamped to [min_objective_weight, max_objective_weight].

The per-cell costs are those of the FEASIBILITY recipe that reached 89.7 mAP50 on BCCD (TAO uses
plain cross-entropy and a mean over all cells, and weights boxes by each object's inverse area):
coverage is focal-modulated binary cross-entropy (gamma 2: the many easy background cells count
little), boxes are L1 on the four encoded offsets where the target covers a cell, and both sums are
divided by the batch's number of covered cells, so a batch of many objects does not train harder.
With TAO's sample weights (cov 1, bbox 10) the box objective weighs about 10x more than in that
recipe, which had them equal.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from taoctl.errors import TaoctlError

OBJECTIVES = ("cov", "bbox")
FOCAL_GAMMA = 2.0
_PROBABILITY_EPS = 1e-6


class DetectNetLoss(nn.Module):
    def __init__(self, cost_function_config, class_names: list[str]):
        super().__init__()
        by_name = {t.name.lower(): t for t in cost_function_config.target_classes}
        missing = [name for name in class_names if name not in by_name]
        if missing:
            raise TaoctlError(f"cost_function_config.target_classes has no entry for {', '.join(missing)}")
        initial, target = [], []
        for name in class_names:
            objectives = {o.name: o for o in by_name[name].objectives}
            unknown = sorted(set(objectives) - set(OBJECTIVES))
            if unknown or not set(OBJECTIVES) <= set(objectives):
                raise TaoctlError(f"cost_function_config.target_classes[{name}].objectives: need exactly \"cov\" and "
                                  f"\"bbox\", got {', '.join(repr(n) for n in objectives) or 'none'}")
            initial.append([objectives[o].initial_weight for o in OBJECTIVES])
            target.append([objectives[o].weight_target for o in OBJECTIVES])
        self.initial_weights = _normalised(torch.tensor(initial, dtype=torch.float32), class_names, "initial_weight")
        self.target_weights = _normalised(torch.tensor(target, dtype=torch.float32), class_names, "weight_target")
        class_weights = torch.tensor([by_name[n].class_weight for n in class_names], dtype=torch.float32)
        if not class_weights.sum() > 0:
            raise TaoctlError("cost_function_config.target_classes: every class_weight is 0; nothing would be learned")
        self.register_buffer("class_weights", class_weights / class_weights.mean())
        self.register_buffer("foreground_weights", torch.tensor(
            [by_name[n].coverage_foreground_weight for n in class_names], dtype=torch.float32))
        self.autoweighting = bool(cost_function_config.enable_autoweighting)
        self.min_objective_weight = cost_function_config.min_objective_weight
        self.max_objective_weight = cost_function_config.max_objective_weight or float("inf")
        self.register_buffer("objective_weights", self.initial_weights.clone())  # [C, 2]: cov, bbox
        # Per class and objective, the costs summed since the last end_epoch (autoweighting).
        self.register_buffer("epoch_costs", torch.zeros(len(class_names), len(OBJECTIVES), dtype=torch.float64))
        self.register_buffer("epoch_batches", torch.zeros((), dtype=torch.float64))

    def set_progress(self, fraction: float) -> None:
        """Training's progress, 0 at the start and 1 at the end: the objective weight schedule."""
        if self.autoweighting:
            return
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.objective_weights.copy_(self.initial_weights + fraction * (self.target_weights - self.initial_weights))

    def end_epoch(self) -> None:
        """With ``enable_autoweighting``: new objective weights from this epoch's mean costs (TAO's hook)."""
        if not self.autoweighting or self.epoch_batches == 0:
            return
        means = self.epoch_costs / self.epoch_batches
        raw = torch.where(means > 0, self.target_weights.double() / means.clamp(min=1e-12), torch.zeros_like(means))
        total = raw.sum(dim=1, keepdim=True)
        updated = (raw / total.clamp(min=1e-12)).clamp(self.min_objective_weight, self.max_objective_weight)
        # A class whose costs were all 0 keeps its weights: there is nothing to balance.
        self.objective_weights.copy_(torch.where(total > 0, updated, self.objective_weights.double()).float())
        self.epoch_costs.zero_()
        self.epoch_batches.zero_()

    def forward(self, cov_pred: torch.Tensor, bbox_pred: torch.Tensor, targets: dict,
                from_logits: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        """Total cost and its parts; ``from_logits``: ``cov_pred`` is before the sigmoid (safer numerics)."""
        cov_target, cov_weight = targets["cov"], targets["cov_weight"]
        batch, classes, grid_h, grid_w = cov_target.shape
        if from_logits:
            probability = torch.sigmoid(cov_pred)
            cross_entropy = F.binary_cross_entropy_with_logits(cov_pred, cov_target, reduction="none")
        else:
            probability = cov_pred.clamp(_PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS)
            cross_entropy = F.binary_cross_entropy(probability, cov_target, reduction="none")
        # Focal modulation: (1 - p_t)^gamma, p_t the probability given to the target.
        miss = torch.where(cov_target > 0.5, 1.0 - probability, probability)
        foreground = self.foreground_weights.view(1, -1, 1, 1)
        cell_weight = cov_weight * 2.0 * torch.where(cov_target > 0.5, foreground, 1.0 - foreground)
        positives = targets["bbox_weight"].sum().clamp(min=1.0)
        cov_cost = (cross_entropy * miss.pow(FOCAL_GAMMA) * cell_weight).sum(dim=(0, 2, 3)) / positives  # [C]
        bbox_error = (bbox_pred - targets["bbox"]).abs().view(batch, classes, 4, grid_h, grid_w).sum(dim=2)
        bbox_cost = (bbox_error * targets["bbox_weight"]).sum(dim=(0, 2, 3)) / positives  # [C]
        costs = torch.stack([cov_cost, bbox_cost], dim=1)  # [C, 2]
        if self.training and self.autoweighting:
            self.epoch_costs += costs.detach().double()
            self.epoch_batches += 1
        total = (self.class_weights[:, None] * self.objective_weights * costs).sum()
        weighted = self.class_weights[:, None] * costs.detach()
        return total, {"cov_loss": float(weighted[:, 0].sum()), "bbox_loss": float(weighted[:, 1].sum())}


def _normalised(weights: torch.Tensor, class_names: list[str], field: str) -> torch.Tensor:
    """Objective weights [C, 2] scaled to sum to 1 per class, as TAO does."""
    sums = weights.sum(dim=1, keepdim=True)
    for name, total in zip(class_names, sums.flatten().tolist()):
        if not total > 0:
            raise TaoctlError(f"cost_function_config.target_classes[{name}].objectives: every {field} is 0")
    return weights / sums
