"""Structured channel pruning with TAO's knobs, on torch-pruning's dependency graph.

TAO's ``prune`` keeps, in every prunable layer, the filters whose normalised L2 norm is above
a threshold (``-pth``), normalising by the layer's largest norm (``-n max``) or by the norm of
all its norms (``-n L2``); layers coupled by element-wise ops (residual adds) or concatenation
must keep the same channels, and their scores are merged by ``-eq`` (union = max,
intersection = min, arithmetic_mean, geometric_mean). The kept count is rounded up to a
multiple of ``-pg`` (granularity) and never falls below ``-nf`` (min filters).

torch-pruning's DependencyGraph finds those couplings (a group = every layer whose channels
must change together, including BatchNorm, depthwise convs and the next layers' inputs), so
this module only scores channels and picks the ones to keep.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from taoctl.errors import TaoctlError

NORMALIZERS = ("max", "L2")
EQUALIZATIONS = ("union", "intersection", "arithmetic_mean", "geometric_mean")

_OUT_FNS = {function.prune_conv_out_channels, function.prune_linear_out_channels,
            getattr(function, "prune_depthwise_conv_out_channels", function.prune_conv_out_channels)}


@dataclasses.dataclass
class PruneReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    layers: list[tuple[str, int, int]]  # (root layer, channels before, after)

    @property
    def param_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    example = torch.zeros(1, *input_shape)
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def _combine(scores: list[torch.Tensor], criterion: str) -> torch.Tensor:
    stacked = torch.stack(scores)
    if criterion == "union":
        return stacked.max(0).values
    if criterion == "intersection":
        return stacked.min(0).values
    if criterion == "arithmetic_mean":
        return stacked.mean(0)
    return stacked.clamp_min(1e-12).log().mean(0).exp()


def prune_model(model: nn.Module, input_shape: tuple[int, int, int], threshold: float = 0.1,
                normalizer: str = "max", equalization: str = "union", granularity: int = 8,
                min_filters: int = 16, excluded: list[str] | None = None,
                output_layers: list[str] | None = None) -> PruneReport:
    """Prune ``model`` in place; ``output_layers`` (e.g. the classifier) keep their outputs."""
    if normalizer not in NORMALIZERS:
        raise TaoctlError(f"-n/--normalizer: unknown normalizer {normalizer}; use {' or '.join(NORMALIZERS)}")
    if equalization not in EQUALIZATIONS:
        raise TaoctlError(f"-eq/--equalization_criterion: unknown criterion {equalization}; "
                          f"use {', '.join(EQUALIZATIONS)}")
    if granularity < 1 or min_filters < 1:
        raise TaoctlError("-pg/--pruning_granularity and -nf/--min_num_filters must be at least 1")
    excluded = list(excluded or [])
    names = dict(model.named_modules())
    unknown = [p for p in excluded if not any(_matches(n, [p]) for n in names)]
    if unknown:
        raise TaoctlError(f"-el/--excluded_layers: no layer named {', '.join(unknown)} in the model "
                          f"(layer names look like {', '.join(list(n for n in names if n)[:4])} ...)")
    model.eval()
    macs_before, params_before = count_macs_params(model, input_shape)
    protected = excluded + list(output_layers or [])
    ignored = [m for n, m in names.items() if n and _matches(n, protected) and isinstance(m, (nn.Conv2d, nn.Linear))]
    module_name = {m: n for n, m in names.items()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape),
                                                  ignored_layers=ignored, verbose=False)
    plans = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        channels = len(group[0].idxs)
        scores = []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if dep.handler not in _OUT_FNS or not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            if max(idxs) >= layer.weight.shape[0]:  # index mapping through a reshape: not this layer's filters
                continue
            norms = layer.weight.detach()[idxs].flatten(1).norm(p=2, dim=1)
            if normalizer == "max":
                norms = norms / norms.max().clamp_min(1e-12)
            else:
                norms = norms / norms.norm(p=2).clamp_min(1e-12)
            full = torch.zeros(channels)
            full[torch.as_tensor(group[i].root_idxs)] = norms
            scores.append(full)
        if not scores:
            continue
        score = _combine(scores, equalization)
        keep = int((score > threshold).sum())
        keep = min(channels, math.ceil(keep / granularity) * granularity)
        keep = max(keep, min(min_filters, channels))
        if keep >= channels:
            continue
        order = torch.argsort(score, descending=True)
        plans.append((root, group[0].dep.handler, sorted(order[keep:].tolist()), channels, keep))
    layers = []
    for root, handler, drop, channels, keep in plans:
        pruning_group = graph.get_pruning_group(root, handler, drop)
        if graph.check_pruning_group(pruning_group):
            pruning_group.prune()
            layers.append((module_name.get(root, "?"), channels, keep))
    macs_after, params_after = count_macs_params(model, input_shape)
    return PruneReport(params_before, params_after, macs_before, macs_after, layers)
