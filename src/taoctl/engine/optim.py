"""Optimizers, regularizers and learning-rate schedules, as TAO's TF1 networks define them.

A task describes its training in plain terms: an :class:`OptimizerSpec`, a :class:`RegularizerSpec`
and a schedule (a callable ``step -> learning rate`` with a ``base_lr``), bundled in an
:class:`OptimizationSpec`. :func:`from_makenet` (classification's ``train_config``) and
:func:`from_cv_common` (the detectors' ``training_config``) read them from TAO's spec messages by
field name, so the engine never imports a task's protobuf module. Then::

    optimizer = build_optimizer(model, spec.optimizer, spec.regularizer, spec.schedule.base_lr)
    scheduler = build_scheduler(optimizer, spec.schedule, spec.optimizer.decay)  # step() every iteration
    loss = loss + regularization_loss(model, spec.regularizer, loss.device)

TAO's Keras regularizers add ``weight * sum(|w|)`` (L1) or ``weight * sum(w ** 2)`` (L2) over the
kernels of the layers in scope; biases and batch-norm parameters are not regularized. L2's gradient
``2 * weight * w`` is exactly weight decay ``2 * weight`` on those kernels, so :func:`build_optimizer`
puts them in their own parameter group; L1 has no such equivalent and stays a loss term
(:func:`regularization_loss`).

Schedules are functions of the iteration (``step`` 0 is the first batch) and of the progress
``step / total_steps``, as TAO's Keras callbacks set the learning rate after every batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from taoctl.errors import TaoctlError

# Keras' defaults for the Adam/RMSprop settings a makenet spec leaves at zero (proto3's "unset").
KERAS_BETAS = (0.9, 0.999)
KERAS_EPSILON = 1e-7
KERAS_RHO = 0.9
# MultiGPULearningRateScheduler's start_lr: makenet's soft_anneal ramps up from it.
SOFT_ANNEAL_START_LR = 3e-4
MAKENET_SCOPES = {"conv2d": nn.Conv2d, "dense": nn.Linear}


# --------------------------------------------------------------------------- descriptions
@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimizer and its settings (Keras' names; ``rho`` is torch RMSprop's ``alpha``).

    ``decay`` is Keras' time-based decay, ``lr / (1 + decay * iterations)`` on top of the schedule;
    :func:`build_scheduler` applies it.
    """

    kind: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = KERAS_BETAS
    epsilon: float = KERAS_EPSILON
    rho: float = KERAS_RHO
    amsgrad: bool = False
    centered: bool = False
    decay: float = 0.0
    # NeMo's optim.weight_decay: on every trainable parameter (decoupled for adamw), when no L2 regularizer is set.
    weight_decay: float = 0.0


@dataclass(frozen=True)
class RegularizerSpec:
    """TAO's kernel regularizer: ``kind`` NO_REG, L1 or L2 with ``weight``, on the layers of ``layer_types``."""

    kind: Literal["NO_REG", "L1", "L2"] = "NO_REG"
    weight: float = 0.0
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def _progress(step: int, total_steps: int) -> float:
    return min(step / max(total_steps, 1), 1.0)


@dataclass(frozen=True)
class StepSchedule:
    """makenet's ``step`` (StepLRScheduler): ``base_lr * gamma ** (step / (total_steps * step_size // 100))``,
    ``step_size`` being a percentage of the training."""

    base_lr: float
    gamma: float
    step_size: int
    total_steps: int

    def __call__(self, step: int) -> float:
        steps_per_gamma = max(max(self.total_steps, 1) * self.step_size // 100, 1)
        return self.base_lr * self.gamma ** (step / steps_per_gamma)


@dataclass(frozen=True)
class SoftAnnealSchedule:
    """makenet's ``soft_anneal`` (MultiGPULearningRateScheduler): a linear ramp from ``start_lr`` to
    ``base_lr`` until progress ``soft_start``, then ``base_lr`` divided by ``annealing_divider`` once
    for every annealing point passed."""

    base_lr: float
    soft_start: float
    annealing_points: tuple[float, ...]
    annealing_divider: float
    total_steps: int
    start_lr: float = SOFT_ANNEAL_START_LR

    def __call__(self, step: int) -> float:
        progress = _progress(step, self.total_steps)
        if progress < self.soft_start:
            t = progress / self.soft_start
            return t * self.base_lr + (1 - t) * self.start_lr
        return self.base_lr / self.annealing_divider ** sum(progress > p for p in self.annealing_points)


def _log_interpolate(low: float, high: float, t: float) -> float:
    """``low`` at t=0, ``high`` at t=1, linear in log space (TAO's exponential ramps)."""
    return math.exp(math.log(low) + t * (math.log(high) - math.log(low)))


@dataclass(frozen=True)
class SoftStartAnnealingSchedule:
    """cv/common's and DetectNet_v2's ``soft_start_annealing_schedule``: from ``min_lr`` up to ``base_lr``
    (max_learning_rate) until progress ``soft_start``, held there, and from progress ``annealing``
    back down to ``min_lr`` at the end; both ramps are exponential."""

    base_lr: float
    min_lr: float
    soft_start: float
    annealing: float
    total_steps: int

    def __call__(self, step: int) -> float:
        progress = _progress(step, self.total_steps)
        t = 1.0
        if progress < self.soft_start:
            t = progress / self.soft_start
        if progress > self.annealing and self.annealing < 1.0:
            t = (1.0 - progress) / (1.0 - self.annealing)
        return _log_interpolate(self.min_lr, self.base_lr, t)


@dataclass(frozen=True)
class SoftStartCosineSchedule:
    """``soft_start_cosine_annealing_schedule`` (cv/common) and makenet's ``cosine``: a linear ramp from
    ``min_lr`` to ``base_lr`` until progress ``soft_start``, then a cosine back towards ``min_lr``.

    TAO's SoftStartCosineAnnealingScheduler takes the cosine of ``pi * (progress - soft_start)``, so
    with ``soft_start > 0`` training ends a little above ``min_lr``; ``reach_min_at_end`` stretches the
    cosine over the remaining ``1 - soft_start`` instead, as taoctl's classification always has.
    """

    base_lr: float
    min_lr: float
    soft_start: float
    total_steps: int
    reach_min_at_end: bool = False

    def __call__(self, step: int) -> float:
        progress = _progress(step, self.total_steps)
        if self.soft_start > 0 and progress < self.soft_start:
            return self.min_lr + (self.base_lr - self.min_lr) * progress / self.soft_start
        t = progress - self.soft_start
        if self.reach_min_at_end:
            t = t / max(1.0 - self.soft_start, 1e-8)
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2


@dataclass
class EarlyStoppingAnnealingSchedule:
    """DetectNet_v2's ``early_stopping_annealing_schedule`` (LRAnnealingEarlyStoppingHook).

    The learning rate ramps exponentially from ``min_lr`` to ``base_lr`` over ``soft_start_steps`` and
    stays there. Annealing is driven by validation: after every validation, call
    :meth:`observe_validation`; once the cost has not improved for ``patience_epochs`` the learning
    rate anneals exponentially back to ``min_lr`` over ``annealing_steps`` (the best cost restarts
    from the current one), and when the cost again stalls for ``patience_epochs`` after annealing has
    finished it returns False: stop training. A run that never validates keeps ``base_lr`` after the
    soft start for its fixed number of epochs. ``annealing_start_step``, ``best_cost`` and
    ``best_epoch`` are the state a resumed run must restore: :meth:`state_dict` /
    :meth:`load_state_dict`, which :class:`ScheduledLR` saves and restores with itself.
    """

    base_lr: float
    min_lr: float
    soft_start_steps: int
    annealing_steps: int
    patience_epochs: int
    annealing_start_step: int | None = None
    best_cost: float | None = None
    best_epoch: int | None = None

    def __call__(self, step: int) -> float:
        if self.annealing_start_step is None:
            t = step / self.soft_start_steps if self.soft_start_steps > 0 else 1.0
        elif self.annealing_steps > 0:
            t = max(1.0 - (step - self.annealing_start_step) / self.annealing_steps, 0.0)
        else:
            t = 1.0
        return _log_interpolate(self.min_lr, self.base_lr, min(t, 1.0))

    def observe_validation(self, epoch: int, cost: float, step: int) -> bool:
        """Record the validation cost of ``epoch`` (reached at iteration ``step``); False: stop training."""
        if self.best_cost is None or cost < self.best_cost:
            self.best_cost, self.best_epoch = cost, epoch
            return True
        if epoch - self.best_epoch < self.patience_epochs:
            return True
        if self.annealing_start_step is None:
            self.annealing_start_step = step
            self.best_cost, self.best_epoch = cost, epoch
            return True
        return step - self.annealing_start_step <= self.annealing_steps

    def state_dict(self) -> dict:
        return {"annealing_start_step": self.annealing_start_step, "best_cost": self.best_cost,
                "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.annealing_start_step = state["annealing_start_step"]
        self.best_cost, self.best_epoch = state["best_cost"], state["best_epoch"]


@dataclass(frozen=True)
class NeMoSchedule:
    """NeMo's ``optim.sched`` policies (nemo/core/optim/lr_scheduler.py), which TAO's conversational tasks use:
    a linear warmup from 0 over ``warmup_steps``, then ``WarmupAnnealing`` (linear to ``min_lr`` at the end),
    ``CosineAnnealing``, ``SquareRootAnnealing`` (``base_lr * sqrt(remaining fraction)``),
    ``InverseSquareRootAnnealing`` or ``constant`` (no schedule: ``optim.sched`` absent)."""

    name: Literal["WarmupAnnealing", "CosineAnnealing", "SquareRootAnnealing", "InverseSquareRootAnnealing",
                  "constant"]
    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.base_lr * (step + 1) / (self.warmup_steps + 1)
        if self.name == "constant":
            return self.base_lr
        span = max(self.total_steps - self.warmup_steps, 1)
        done = min(max(step - self.warmup_steps, 0) / span, 1.0)
        if self.name == "WarmupAnnealing":
            factor = 1.0 - done
        elif self.name == "CosineAnnealing":
            factor = (1 + math.cos(math.pi * done)) / 2
        elif self.name == "SquareRootAnnealing":
            factor = math.sqrt(1.0 - done)
        else:  # InverseSquareRootAnnealing
            factor = 1.0 / math.sqrt(max(step - self.warmup_steps, 0) + 1)
        return max(self.min_lr, self.base_lr * factor) if self.min_lr else self.base_lr * factor


LRSchedule = (StepSchedule | SoftAnnealSchedule | SoftStartAnnealingSchedule | SoftStartCosineSchedule
              | EarlyStoppingAnnealingSchedule | NeMoSchedule)


@dataclass(frozen=True)
class OptimizationSpec:
    """What a spec's optimizer, regularizer and learning-rate settings say."""

    optimizer: OptimizerSpec
    regularizer: RegularizerSpec
    schedule: LRSchedule


# --------------------------------------------------------------------------- builders
def regularized_kernels(model: nn.Module, regularizer: RegularizerSpec) -> list[nn.Parameter]:
    """The trainable kernels (``weight``) of the layers in the regularizer's scope; empty for NO_REG."""
    if regularizer.kind == "NO_REG":
        return []
    return [m.weight for m in model.modules()
            if isinstance(m, regularizer.layer_types) and m.weight.requires_grad]


def build_optimizer(model: nn.Module, optimizer: OptimizerSpec, regularizer: RegularizerSpec,
                    base_lr: float) -> torch.optim.Optimizer:
    """The torch optimizer over the model's trainable parameters; L2 is weight decay ``2 * weight`` on
    the regularized kernels (their own group, first), every other parameter has none."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TaoctlError("every layer of the model is frozen (freeze_blocks / freeze_bn): nothing left to train")
    if regularizer.kind == "L2" and regularizer.weight > 0:
        kernel_ids = {id(p) for p in regularized_kernels(model, regularizer)}
        groups = [{"params": [p for p in trainable if id(p) in kernel_ids], "weight_decay": 2 * regularizer.weight},
                  {"params": [p for p in trainable if id(p) not in kernel_ids], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": trainable, "weight_decay": optimizer.weight_decay}]
    if optimizer.kind == "sgd":
        # Keras' Nesterov step with zero momentum is the plain step; torch refuses the combination.
        return torch.optim.SGD(groups, lr=base_lr, momentum=optimizer.momentum,
                               nesterov=bool(optimizer.nesterov and optimizer.momentum))
    if optimizer.kind == "adam":
        return torch.optim.Adam(groups, lr=base_lr, betas=optimizer.betas, eps=optimizer.epsilon,
                                amsgrad=optimizer.amsgrad)
    if optimizer.kind == "adamw":
        return torch.optim.AdamW(groups, lr=base_lr, betas=optimizer.betas, eps=optimizer.epsilon,
                                 amsgrad=optimizer.amsgrad)
    if optimizer.kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr=base_lr, alpha=optimizer.rho, eps=optimizer.epsilon,
                                   momentum=optimizer.momentum, centered=optimizer.centered)
    raise ValueError(f"unknown optimizer kind {optimizer.kind!r}")


def regularization_loss(model: nn.Module, regularizer: RegularizerSpec, device) -> torch.Tensor:
    """What the regularizer adds to the loss, on ``device``: L1's ``weight * sum(|w|)`` over the
    regularized kernels; zero for L2 (weight decay, see :func:`build_optimizer`) and NO_REG."""
    kernels = regularized_kernels(model, regularizer) if regularizer.kind == "L1" and regularizer.weight else []
    if not kernels:
        return torch.zeros((), device=device)
    return regularizer.weight * sum(w.abs().sum().to(device) for w in kernels)


class ScheduledLR(torch.optim.lr_scheduler.LambdaLR):
    """A per-iteration LambdaLR following ``schedule``, with Keras' time-based ``decay`` on top.

    Its ``state_dict`` is plain data (the trainer's state files hold no pickles) and carries the
    state of a schedule that has one (early stopping's annealing start and best cost), so a resumed
    run continues the schedule where it stood, not only at the same step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule, decay: float = 0.0):
        self.schedule, self.decay = schedule, decay
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        return self.schedule(step) / self.schedule.base_lr / (1.0 + self.decay * step)

    def state_dict(self) -> dict:
        state = {k: v for k, v in super().state_dict().items() if k not in ("schedule", "decay")}
        if hasattr(self.schedule, "state_dict"):
            state["schedule_state"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        schedule_state = state.pop("schedule_state", None)
        if schedule_state is not None:
            self.schedule.load_state_dict(schedule_state)
        super().load_state_dict(state)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule, decay: float = 0.0) -> ScheduledLR:
    """The per-iteration scheduler following ``schedule`` (see :class:`ScheduledLR`).

    The optimizer's groups must start at ``schedule.base_lr`` (build_optimizer's ``base_lr``).
    """
    return ScheduledLR(optimizer, schedule, decay)


# --------------------------------------------------------------------------- spec adapters
def from_makenet(train_config, world_size: int, total_steps: int) -> OptimizationSpec:
    """classification's (makenet's) ``train_config``: its ``optimizer``, ``reg_config`` and
    ``lr_config``; the learning rate is scaled by the GPU count, as TAO does."""
    schedule = _makenet_schedule(train_config.lr_config, world_size, max(int(total_steps), 1))
    if schedule.base_lr <= 0:
        raise TaoctlError("train_config.lr_config: learning_rate must be positive")
    return OptimizationSpec(_makenet_optimizer(train_config.optimizer), _makenet_regularizer(train_config.reg_config),
                            schedule)


def _makenet_optimizer(config) -> OptimizerSpec:
    which = config.WhichOneof("optim")
    if which == "adam":
        cfg = config.adam
        return OptimizerSpec("adam", betas=(cfg.beta_1 or KERAS_BETAS[0], cfg.beta_2 or KERAS_BETAS[1]),
                             epsilon=cfg.epsilon or KERAS_EPSILON, decay=float(cfg.decay))
    if which == "rmsprop":
        cfg = config.rmsprop
        return OptimizerSpec("rmsprop", rho=cfg.rho or KERAS_RHO, epsilon=cfg.epsilon or KERAS_EPSILON,
                             decay=float(cfg.decay))
    cfg = config.sgd
    return OptimizerSpec("sgd", momentum=cfg.momentum, nesterov=bool(cfg.nesterov), decay=float(cfg.decay))


def _makenet_regularizer(reg_config) -> RegularizerSpec:
    kind = (reg_config.type or "None").strip()
    if not kind or kind.upper() == "NONE":
        return RegularizerSpec("NO_REG")
    if kind.upper() not in ("L1", "L2"):
        raise TaoctlError(f'train_config.reg_config.type: unknown regularizer "{kind}"; use L1, L2 or None')
    scopes = {s.strip().lower() for s in (reg_config.scope or "Conv2D,Dense").split(",") if s.strip()}
    unknown = scopes - MAKENET_SCOPES.keys()
    if unknown:
        raise TaoctlError(f"train_config.reg_config.scope: unknown layer type(s) {sorted(unknown)}; use Conv2D, Dense")
    layer_types = tuple(layer for name, layer in MAKENET_SCOPES.items() if name in scopes)
    return RegularizerSpec(kind.upper(), float(reg_config.weight_decay), layer_types)


def _makenet_schedule(lr_config, world_size: int, total_steps: int) -> LRSchedule:
    which = lr_config.WhichOneof("lr_scheduler")
    if which == "step":
        cfg = lr_config.step
        return StepSchedule(cfg.learning_rate * world_size, cfg.gamma if cfg.gamma > 0 else 1.0, int(cfg.step_size),
                            total_steps)
    if which == "soft_anneal":
        cfg = lr_config.soft_anneal
        points = list(cfg.annealing_points)
        if any(p < cfg.soft_start for p in points) or points != sorted(points):
            raise TaoctlError("train_config.lr_config.soft_anneal: annealing_points must be increasing and after "
                              "soft_start")
        return SoftAnnealSchedule(cfg.learning_rate * world_size, cfg.soft_start, tuple(points),
                                  cfg.annealing_divider or 10.0, total_steps)
    if which == "cosine":
        cfg = lr_config.cosine
        base = cfg.learning_rate * world_size
        return SoftStartCosineSchedule(base, base * cfg.min_lr_ratio, cfg.soft_start, total_steps,
                                       reach_min_at_end=True)
    raise TaoctlError("train_config.lr_config: set one of step, soft_anneal or cosine")


def from_cv_common(training_config, steps_per_epoch: int, lr_multiplier: float = 1.0) -> OptimizationSpec:
    """A detector's ``training_config`` (cv/common's TrainingConfig, or DetectNet_v2's own): its
    ``learning_rate``, ``optimizer`` and ``regularizer`` over ``num_epochs`` epochs of
    ``steps_per_epoch`` iterations; learning rates are multiplied by ``lr_multiplier`` (the GPU
    count where the network's TAO trainer scales by it)."""
    epochs = int(training_config.num_epochs)
    if epochs <= 0:
        raise TaoctlError("training_config.num_epochs: must be at least 1")
    schedule = _cv_common_schedule(training_config.learning_rate, max(int(steps_per_epoch), 1), epochs, lr_multiplier)
    return OptimizationSpec(_cv_common_optimizer(training_config.optimizer),
                            _cv_common_regularizer(training_config.regularizer), schedule)


def _oneof_choices(message, oneof: str) -> str:
    names = [field.name for field in message.DESCRIPTOR.oneofs_by_name[oneof].fields]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _field(message, name: str, default):
    """``message.name``, or ``default`` where the message type has no such field (DetectNet_v2's Adam
    has no amsgrad)."""
    return getattr(message, name) if name in message.DESCRIPTOR.fields_by_name else default


def _check_learning_rates(cfg, field: str) -> None:
    if cfg.min_learning_rate <= 0:
        raise TaoctlError(f"{field}.min_learning_rate: must be positive")
    if cfg.max_learning_rate < cfg.min_learning_rate:
        raise TaoctlError(f"{field}.max_learning_rate: must be at least min_learning_rate ({cfg.min_learning_rate:g})")


def _cv_common_schedule(config, steps_per_epoch: int, epochs: int, multiplier: float) -> LRSchedule:
    which = config.WhichOneof("learning_rate")
    if which is None:
        raise TaoctlError(f"training_config.learning_rate: set one of {_oneof_choices(config, 'learning_rate')}")
    field = f"training_config.learning_rate.{which}"
    cfg = getattr(config, which)
    _check_learning_rates(cfg, field)
    total = steps_per_epoch * epochs
    base, low = cfg.max_learning_rate * multiplier, cfg.min_learning_rate * multiplier
    if which == "soft_start_annealing_schedule":
        if not 0.0 <= cfg.soft_start <= cfg.annealing <= 1.0:
            raise TaoctlError(f"{field}: soft_start and annealing must satisfy 0 <= soft_start <= annealing <= 1 "
                              f"(got {cfg.soft_start:g}, {cfg.annealing:g})")
        return SoftStartAnnealingSchedule(base, low, cfg.soft_start, cfg.annealing, total)
    if which == "soft_start_cosine_annealing_schedule":
        if not 0.0 <= cfg.soft_start <= 1.0:
            raise TaoctlError(f"{field}.soft_start: must be between 0 and 1 (got {cfg.soft_start:g})")
        return SoftStartCosineSchedule(base, low, cfg.soft_start, total)
    if which == "early_stopping_annealing_schedule":
        return EarlyStoppingAnnealingSchedule(base, low, int(cfg.soft_start_epochs) * steps_per_epoch,
                                              int(cfg.annealing_epochs) * steps_per_epoch, int(cfg.patience_steps))
    raise TaoctlError(f"{field}: not supported")


def _cv_common_optimizer(config) -> OptimizerSpec:
    which = config.WhichOneof("optimizer")
    if which is None:
        raise TaoctlError(f"training_config.optimizer: set one of {_oneof_choices(config, 'optimizer')}")
    field = f"training_config.optimizer.{which}"
    cfg = getattr(config, which)
    if which in ("adam", "rmsprop") and cfg.epsilon <= 0:
        raise TaoctlError(f"{field}.epsilon: must be positive")
    if which in ("sgd", "rmsprop") and cfg.momentum < 0:
        raise TaoctlError(f"{field}.momentum: must not be negative")
    if which == "adam":
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(cfg, name) < 1.0:
                raise TaoctlError(f"{field}.{name}: must be in [0, 1) (got {getattr(cfg, name):g})")
        return OptimizerSpec("adam", betas=(cfg.beta1, cfg.beta2), epsilon=cfg.epsilon,
                             amsgrad=bool(_field(cfg, "amsgrad", False)))
    if which == "sgd":
        return OptimizerSpec("sgd", momentum=cfg.momentum, nesterov=bool(cfg.nesterov))
    if which == "rmsprop":
        if not 0.0 < cfg.rho < 1.0:
            raise TaoctlError(f"{field}.rho: must be in (0, 1) (got {cfg.rho:g})")
        return OptimizerSpec("rmsprop", rho=cfg.rho, momentum=cfg.momentum, epsilon=cfg.epsilon,
                             centered=bool(cfg.centered))
    raise TaoctlError(f"{field}: not supported")


def _cv_common_regularizer(config) -> RegularizerSpec:
    kind = config.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[config.type].name
    if kind == "NO_REG":
        return RegularizerSpec("NO_REG")
    if not 0.0 < config.weight < 1.0:
        raise TaoctlError(f"training_config.regularizer.weight: must be in (0, 1) for {kind} (got {config.weight:g})")
    return RegularizerSpec(kind, float(config.weight))


def from_nemo(optim_config, steps_per_epoch: int, epochs: int) -> OptimizationSpec:
    """A NeMo ``optim`` section (``name``, ``lr``, ``betas``, ``weight_decay``, ``sched.{name, warmup_steps,
    warmup_ratio, min_lr}``), read by field name, for ``epochs`` of ``steps_per_epoch``."""
    name = optim_config.name.lower()
    kinds = {"adam": "adam", "adamw": "adamw", "sgd": "sgd", "rmsprop": "rmsprop"}
    if name not in kinds:
        raise TaoctlError(f"optim.name: unknown optimizer {optim_config.name!r}; use one of {', '.join(kinds)}")
    betas = tuple(optim_config.betas) if optim_config.betas else KERAS_BETAS
    optimizer = OptimizerSpec(kind=kinds[name], betas=betas, epsilon=1e-8,
                              momentum=getattr(optim_config, "momentum", 0.0) or 0.0,
                              weight_decay=optim_config.weight_decay or 0.0)
    total = max(steps_per_epoch * epochs, 1)
    sched = optim_config.sched
    if sched is None:
        return OptimizationSpec(optimizer, RegularizerSpec(), NeMoSchedule("constant", optim_config.lr, total))
    if sched.warmup_steps is not None:
        warmup = sched.warmup_steps
    else:
        warmup = int(round((sched.warmup_ratio or 0.0) * total))
    return OptimizationSpec(optimizer, RegularizerSpec(),
                            NeMoSchedule(sched.name, optim_config.lr, total, warmup, sched.min_lr or 0.0))
