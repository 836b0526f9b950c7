"""Model parallelism as TAO's ``model_parallelism`` does it: consecutive layers on consecutive devices.

TAO gives each device a fraction of the model's layers, in execution order: with fractions
f_1..f_n, device k holds the layers whose index i satisfies round(F_{k-1} L) <= i < round(F_k L),
F being the normalised running sum and L the layer count. Here a layer is a leaf module, and
layers are placed in *units*: the root's children and, inside ``nn.Sequential`` containers,
theirs. Any other module (a residual block, an inception module) keeps its whole subtree on
one device, because its forward may combine tensors (an add, a concat) that must share one.
A forward pre-hook on each unit moves its inputs to the unit's device; ``Tensor.to`` is
differentiable, so gradients flow back across the cut.

The root's forward must run its children one after another (every taoctl backbone does), as
must any ``nn.Sequential``; tests check each registered backbone on mixed devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from taoctl.engine.device import to_device
from taoctl.errors import TaoctlError


@dataclass
class Segment:
    """The units one device holds."""

    device: torch.device
    units: list[str] = field(default_factory=list)
    parameters: int = 0

    def describe(self) -> str:
        span = f"{self.units[0]} .. {self.units[-1]}" if len(self.units) > 1 else self.units[0]
        return f"{self.device}: {span} ({len(self.units)} units, {self.parameters:,} params)"


def _chains_children(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def pipeline_units(model: nn.Module):
    """(units, containers): the modules that may sit on different devices, in registration order
    (see the module docstring), and the root and Sequentials opened to find them."""
    units, containers = [], [("", model)]

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if _chains_children(child) and len(child) > 0:
                containers.append((full, child))
                visit(full + ".", child)
            else:
                units.append((full, child))

    visit("", model)
    return units, containers


def execution_order(model: nn.Module, units, sample: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """``units`` in the order a forward pass on ``sample`` first calls them; uncalled units go last."""
    called: list[str] = []
    handles = [module.register_forward_pre_hook(lambda _m, _a, name=name: called.append(name))
               for name, module in units]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rank = {}
    for name in called:
        rank.setdefault(name, len(rank))
    return sorted(units, key=lambda unit: rank.get(unit[0], len(rank)))


def check_fractions(fractions) -> list[float]:
    weights = [float(f) for f in fractions]
    if not weights or any(not w > 0 for w in weights):
        raise TaoctlError(f"the fractions must all be > 0, got {weights}")
    return weights


def assign_segments(layer_counts: list[int], fractions) -> list[int]:
    """For each unit (given its leaf-layer count), the index of the device that holds it (TAO's rule)."""
    weights = check_fractions(fractions)
    total_layers = sum(layer_counts)
    running, bounds = 0.0, [0]
    for w in weights:
        running += w
        bounds.append(round(running / sum(weights) * total_layers))
    bounds[-1] = total_layers
    owner, first_layer, segment = [], 0, 0
    for count in layer_counts:
        while segment < len(weights) - 1 and first_layer >= bounds[segment + 1]:
            segment += 1
        owner.append(segment)
        first_layer += count
    return owner


def split_model(model: nn.Module, fractions, devices, sample: torch.Tensor) -> list[Segment]:
    """Place ``model`` across ``devices`` (one per fraction), in place; returns what went where.

    ``sample`` is one input batch (on any device) for finding the execution order.
    """
    devices, fractions = [torch.device(d) for d in devices], list(fractions)
    if len(devices) != len(fractions):
        raise TaoctlError(f"{len(fractions)} fractions for {len(devices)} devices")
    units, containers = pipeline_units(model)
    for name, container in containers:
        if [*container.parameters(recurse=False), *container.buffers(recurse=False)]:
            raise TaoctlError(f"cannot split {type(model).__name__}: {name or 'its root'} holds tensors of its own, "
                              f"outside the layers that are placed")
    units = execution_order(model, units, sample)
    layer_counts = [max(sum(1 for m in module.modules() if not any(m.children())), 1) for _, module in units]
    owner = assign_segments(layer_counts, fractions)
    empty = [str(device) for index, device in enumerate(devices) if index not in owner]
    if empty:
        raise TaoctlError(f"{fractions} leaves {', '.join(empty)} without layers "
                          f"({len(units)} units to place); give those devices larger fractions")
    segments = [Segment(device) for device in devices]
    # Each unit goes straight to its device: the whole model may not fit on any one of them.
    for (name, module), index in zip(units, owner):
        segment = segments[index]
        module.to(segment.device)
        module.register_forward_pre_hook(
            lambda _m, args, kwargs, device=segment.device: (to_device(args, device), to_device(kwargs, device)),
            with_kwargs=True)
        segment.units.append(name)
        segment.parameters += sum(p.numel() for p in module.parameters())
    return segments


def spans_devices(model: nn.Module) -> bool:
    """True when the model's parameters live on more than one device (it was split)."""
    return len({p.device for p in model.parameters()}) > 1
