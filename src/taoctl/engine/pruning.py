"""Structured channel pruning with TAO's knobs, on torch-pruning's dependency graph.

TAO's ``prune`` keeps, in every prunable layer, the filters whose normalised L2 norm is above
a threshold (``-pth``), normalising by the layer's largest norm (``-n max``) or, as TAO does,
by the L2 norm of all its norms times their count (``-n L2``); layers coupled by element-wise
ops (residual adds) or concatenation must keep the same channels, and their scores are merged
by ``-eq`` (union = max, intersection = min, arithmetic_mean, geometric_mean). The kept count
is rounded up to a multiple of ``-pg`` (granularity) and never falls below ``-nf`` (min filters).

torch-pruning's DependencyGraph finds those couplings (a group = every layer whose channels
must change together, including BatchNorm, depthwise convs and the next layers' inputs), so
this module only scores channels and picks the ones to keep. A model's named heads
(``head_names``: a classifier's last layer, a detector's ``output_cov`` and ``output_bbox``)
produce its outputs, so their output channels are never pruned; their inputs are.

Two taoctl extensions address what the kernel norm misses in BatchNorm networks, where the
following BatchNorm rescales every channel to unit variance whatever its kernel's norm:
criterion ``L2_bn`` scores the kernel folded with that BatchNorm's scale (what the deployed,
BN-folded layer computes), and ``reconstruct`` refits the layers fed by pruned channels on
calibration images so that they reproduce the unpruned model's outputs.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from taoctl.engine import keras_weights
from taoctl.errors import TaoctlError

NORMALIZERS = ("max", "L2")
CRITERIA = ("L2", "L2_bn")
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
    kept_outputs: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # layer -> kept output channels

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


def _following_batchnorm(graph, layer: nn.Module) -> nn.Module | None:
    """The BatchNorm that directly normalises ``layer``'s output, if any."""
    node = graph.module2node.get(layer)
    for out in node.outputs if node else ():
        if isinstance(out.module, nn.modules.batchnorm._BatchNorm):
            return out.module
    return None


def _filter_norms(graph, layer: nn.Module, idxs, criterion: str) -> torch.Tensor:
    weight = layer.weight.detach()[idxs].flatten(1)
    norms = weight.norm(p=2, dim=1)
    if criterion == "L2_bn":
        bn = _following_batchnorm(graph, layer)
        if bn is not None and bn.running_var is not None:
            gamma = bn.weight.detach()[idxs].abs() if bn.affine else torch.ones(len(idxs))
            norms = norms * gamma / torch.sqrt(bn.running_var[idxs] + bn.eps)
    return norms


def prune_model(model: nn.Module, input_shape: tuple[int, int, int], threshold: float = 0.1,
                normalizer: str = "max", equalization: str = "union", granularity: int = 8,
                min_filters: int = 16, excluded: list[str] | None = None,
                output_layers: list[str] | None = None, criterion: str = "L2") -> PruneReport:
    """Prune ``model`` in place; ``output_layers`` keep their outputs (default: the model's ``head_names``)."""
    if criterion not in CRITERIA:
        raise TaoctlError(f"--criterion: unknown criterion {criterion}; use {', '.join(CRITERIA)}")
    if normalizer not in NORMALIZERS:
        raise TaoctlError(f"-n/--normalizer: unknown normalizer {normalizer}; use {' or '.join(NORMALIZERS)}")
    if equalization not in EQUALIZATIONS:
        raise TaoctlError(f"-eq/--equalization_criterion: unknown criterion {equalization}; "
                          f"use {', '.join(EQUALIZATIONS)}")
    if granularity < 1 or min_filters < 1:
        raise TaoctlError("-pg/--pruning_granularity and -nf/--min_num_filters must be at least 1")
    # TAO's notebooks list Keras layer names (block_1a_conv_1); each stands for its taoctl module.
    excluded = keras_weights.to_module_names(model, list(excluded or []))
    output_layers = list(getattr(model, "head_names", ()) if output_layers is None else output_layers)
    names = dict(model.named_modules())
    unknown = [p for p in excluded if not any(_matches(n, [p]) for n in names)]
    if unknown:
        keras_names = [k for k, v in keras_weights.keras_layer_names(model).items() if k != v]
        keras_hint = f", or TAO's Keras names such as {', '.join(keras_names[:2])}" if keras_names else ""
        raise TaoctlError(f"-el/--excluded_layers: no layer named {', '.join(unknown)} in the model "
                          f"(layer names look like {', '.join(list(n for n in names if n)[:4])} ..."
                          f"{keras_hint})")
    if any(name not in names for name in output_layers):
        raise TaoctlError(f"the model has no output layer {', '.join(n for n in output_layers if n not in names)}")
    model.eval()
    macs_before, params_before = count_macs_params(model, input_shape)
    protected = excluded + output_layers
    ignored = [m for n, m in names.items() if n and _matches(n, protected) and isinstance(m, (nn.Conv2d, nn.Linear))]
    module_name = {m: n for n, m in names.items()}
    # Protected layers are traced like any other (a layer torch-pruning is told to ignore while
    # tracing hides its inputs, so the channels feeding a head could never be pruned); only the
    # groups that would prune their outputs are skipped.
    with torch.enable_grad():  # the dependency graph is traced through autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape),
                                                      verbose=False)
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
            norms = _filter_norms(graph, layer, idxs, criterion)
            if normalizer == "max":
                norms = norms / norms.max().clamp_min(1e-12)
            else:
                norms = norms / norms.norm(p=2).clamp_min(1e-12) * len(norms)
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
    layers, kept_outputs = [], {}
    for root, handler, drop, channels, keep in plans:
        pruning_group = graph.get_pruning_group(root, handler, drop)
        if graph.check_pruning_group(pruning_group):
            for dep, idxs in pruning_group:
                layer = dep.target.module
                if dep.handler in _OUT_FNS and isinstance(layer, (nn.Conv2d, nn.Linear)):
                    dropped = set(idxs)
                    kept_outputs[module_name[layer]] = [c for c in range(layer.weight.shape[0]) if c not in dropped]
            pruning_group.prune()
            layers.append((module_name.get(root, "?"), channels, keep))
    macs_after, params_after = count_macs_params(model, input_shape)
    return PruneReport(params_before, params_after, macs_before, macs_after, layers, kept_outputs)


def prune_classifier_inputs(model: nn.Module, head: str, images: torch.Tensor, keep_ratio: float,
                            granularity: int = 8, min_filters: int = 16,
                            batch_size: int = 16) -> tuple[str, int, int] | None:
    """Keep the fraction ``keep_ratio`` of the linear classifier's inputs that move its logits most.

    The layer that feeds a globally pooled classifier holds a large share of the parameters
    (mobilenet_v2: 1280 x 320 of 2.2 M), yet filter norms cannot rank it: on the ants_bees model its
    1280 BatchNorm-folded norms all lie within 0.86-0.94 of the largest, so no threshold prunes
    some and not all of them. Here input feature c scores sum_k |W[k, c]| x std(x_c) on ``images``
    (normalised): how far it moves the logits. Its dependency group (the producing layer's
    filters, BatchNorm...) is pruned with it, and the dropped features' mean contribution moves
    into the classifier's bias. The classifier is not refit on the images: with as many inputs as
    images, least squares fits them too closely (measured: 1-2 % lower top-1 after retraining).
    Returns (producing layer, channels before, after), or None if nothing is pruned.
    """
    modules = dict(model.named_modules())
    linears = [(n, m) for n, m in modules.items() if _matches(n, [head]) and isinstance(m, nn.Linear)]
    if not linears:
        raise TaoctlError(f"--classifier_input_ratio: the classifier {head or '(none)'} has no linear layer")
    name, linear = linears[-1]
    if not 0 < keep_ratio <= 1:
        raise TaoctlError(f"--classifier_input_ratio: {keep_ratio} is not in (0, 1]")
    count = linear.in_features
    keep = min(count, max(min(min_filters, count), math.ceil(keep_ratio * count / granularity) * granularity))
    if keep >= count:
        return None
    features = []
    handle = linear.register_forward_pre_hook(lambda mod, inputs: features.append(inputs[0].detach().flatten(1)))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    handle.remove()
    features = torch.cat(features)
    score = linear.weight.detach().abs().sum(0) * features.std(0)
    drop = sorted(torch.argsort(score, descending=True)[keep:].tolist())
    with torch.enable_grad():  # the dependency graph is traced through autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=images[:1])
    group = graph.get_pruning_group(linear, function.prune_linear_in_channels, drop)
    producers = [(dep.target.module, idxs) for dep, idxs in group
                 if dep.handler in _OUT_FNS and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))]
    if not graph.check_pruning_group(group) or not producers or any(len(idxs) != len(drop) for _, idxs in producers):
        raise TaoctlError(f"--classifier_input_ratio: the inputs of {name} are not one per channel of the layer "
                          "before it (it needs a globally pooled classifier)")
    if linear.bias is not None:
        with torch.no_grad():
            linear.bias += linear.weight[:, drop] @ features[:, drop].mean(0)
    group.prune()
    return {m: n for n, m in modules.items()}[producers[0][0]], count, keep


class _StopForward(Exception):
    pass


def _fan_in(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows (positions x fan-in): unfolded kxk windows for a conv."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = torch.nn.functional.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _outputs(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1, y.shape[-1]) if y.dim() == 2 else y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def _rows(count: int, wanted: int, seed: int) -> torch.Tensor:
    """The same random row choice for the original and the pruned model's tensors."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:wanted]


def _forward_until(net: nn.Module, batch: torch.Tensor) -> None:
    try:
        net(batch)
    except _StopForward:
        pass


def reconstruct(original: nn.Module, pruned: nn.Module, images: torch.Tensor, kept_outputs: dict[str, list[int]],
                rows_per_layer: int = 16384, ridge: float = 1e-3, batch_size: int = 16, log=None) -> list[str]:
    """Refit, front to back, each layer whose input channels pruning removed, by least squares.

    Every such conv/linear layer (not depthwise) gets the weights that best reproduce the
    original model's output of that layer on ``images`` (already normalised), from the inputs
    the pruned model really feeds it, i.e. after the refits of the layers before it. The
    intercept goes into the layer's bias, or into the running mean of the BatchNorm that follows
    it. A ridge term pulls the solution towards the plainly pruned weights, so layers with few
    input rows (the classifier) stay close to them. ``kept_outputs`` (from the PruneReport)
    names the original output channels each pruned layer still has. Returns the refit layer names.
    """
    original.eval()
    pruned.eval()
    source, modules = dict(original.named_modules()), dict(pruned.named_modules())
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
             for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        pruned(images[:1])
    for hook in hooks:
        hook.remove()
    targets = [n for n in dict.fromkeys(order)
               if getattr(modules[n], "groups", 1) == 1 and _fan_in(modules[n]) < _fan_in(source[n])]
    if not targets:
        return []
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    per_batch = max(rows_per_layer // len(batches), 1)

    # One pass of the original model: every target's output rows, on a fixed random row choice.
    wanted = {n: [] for n in targets}
    current_batch = [0]

    def keep_output(name, layer_index):
        def hook(mod, inputs, output):
            y = _outputs(output.detach())
            if name in kept_outputs:
                y = y[:, kept_outputs[name]]
            wanted[name].append(y[_rows(len(y), per_batch, layer_index * 100003 + current_batch[0])].double())
        return hook

    handles = [source[n].register_forward_hook(keep_output(n, i)) for i, n in enumerate(targets)]
    with torch.no_grad():
        for current_batch[0], batch in enumerate(batches):
            original(batch)
    for handle in handles:
        handle.remove()

    with torch.enable_grad():  # the dependency graph is traced through autograd
        graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=images[:1])
    for layer_index, name in enumerate(targets):
        layer = modules[name]
        rows = []

        def keep_input(mod, inputs, output):
            x = _patches(mod, inputs[0].detach())
            rows.append(x[_rows(len(x), per_batch, layer_index * 100003 + len(rows))].double())
            raise _StopForward

        handle = layer.register_forward_hook(keep_input)
        with torch.no_grad():
            for batch in batches:
                _forward_until(pruned, batch)
        handle.remove()
        x, y = torch.cat(rows), torch.cat(wanted.pop(name))
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
        bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(len(weight), dtype=x.dtype)
        prior = torch.cat([weight, bias[:, None]], 1).T
        gram = x.T @ x
        strength = ridge * gram.diagonal().mean()
        solution = torch.linalg.solve(gram + strength * torch.eye(len(gram), dtype=x.dtype), x.T @ y + strength * prior)
        with torch.no_grad():
            layer.weight.copy_(solution[:-1].T.reshape(layer.weight.shape).to(layer.weight.dtype))
            intercept = solution[-1]
            if layer.bias is not None:
                layer.bias.copy_(intercept.to(layer.bias.dtype))
            else:
                bn = _following_batchnorm(graph, layer)
                if bn is not None and bn.running_mean is not None:
                    bn.running_mean.sub_(intercept.to(bn.running_mean.dtype))
        if log:
            log(f"  refit {name} on {len(x):,} rows")
    return targets
