"""taoctl.engine.optim: TAO's schedules, regularizers and optimizers, and the two spec adapters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from torch import nn

from taoctl.engine import optim
from taoctl.errors import TaoctlError
from taoctl.tasks.classification import spec as classification_spec
from taoctl.tasks.classification.proto import experiment_pb2 as classification_pb2
from taoctl.tasks.detectnet_v2 import spec as detectnet_v2_spec
from taoctl.tasks.detectnet_v2.proto import experiment_pb2 as detectnet_v2_pb2
from taoctl.tasks.yolo_v3 import spec as yolo_v3_spec
from taoctl.tasks.yolo_v3.proto import experiment_pb2 as yolo_v3_pb2

SPECS = Path("/work/shared/tao_specs/NVIDIA")
STARTER = SPECS / "tao_tutorials/notebooks/tao_launcher_starter_kit"
needs_corpus = pytest.mark.skipif(not SPECS.is_dir(), reason="TAO spec corpus not available")


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


# --------------------------------------------------------------------------- schedules (TAO's formulas)
def test_step_schedule_multiplies_by_gamma_every_step_size_percent():
    schedule = optim.StepSchedule(base_lr=0.1, gamma=0.5, step_size=10, total_steps=100)
    assert schedule(0) == 0.1
    assert schedule(10) == pytest.approx(0.05)
    assert schedule(20) == pytest.approx(0.025)
    assert schedule(15) == pytest.approx(0.1 * 0.5 ** 1.5)


def test_soft_anneal_ramps_from_3e_4_then_divides_after_each_point():
    schedule = optim.SoftAnnealSchedule(base_lr=0.1, soft_start=0.1, annealing_points=(0.3, 0.6),
                                        annealing_divider=10.0, total_steps=100)
    assert schedule(0) == pytest.approx(3e-4)
    assert schedule(5) == pytest.approx((0.1 + 3e-4) / 2)
    assert schedule(10) == pytest.approx(0.1)
    assert schedule(30) == pytest.approx(0.1)  # TAO divides once progress is past a point
    assert schedule(31) == pytest.approx(0.01)
    assert schedule(61) == pytest.approx(0.001)
    assert schedule(500) == pytest.approx(0.001)  # progress stops at 1


def test_soft_start_annealing_is_exponential_up_and_down():
    schedule = optim.SoftStartAnnealingSchedule(base_lr=1e-3, min_lr=1e-5, soft_start=0.1, annealing=0.8,
                                                total_steps=100)
    assert schedule(0) == pytest.approx(1e-5)
    assert schedule(5) == pytest.approx(1e-4)  # halfway on a log scale: the geometric mean
    assert schedule(10) == pytest.approx(1e-3)
    assert schedule(50) == pytest.approx(1e-3)
    assert schedule(90) == pytest.approx(1e-4)
    assert schedule(100) == pytest.approx(1e-5)


def test_soft_start_cosine_follows_tao_and_the_stretched_variant_reaches_min_lr():
    tao = optim.SoftStartCosineSchedule(base_lr=1e-4, min_lr=1e-7, soft_start=0.3, total_steps=100)
    span = 1e-4 - 1e-7
    assert tao(0) == pytest.approx(1e-7)
    assert tao(15) == pytest.approx(1e-7 + span / 2)
    assert tao(30) == pytest.approx(1e-4)
    assert tao(80) == pytest.approx(1e-7 + span / 2)  # cos(pi * 0.5)
    assert tao(100) == pytest.approx(1e-7 + span * (1 + math.cos(0.7 * math.pi)) / 2)
    assert tao(100) > 2e-6  # TAO's cosine stops short of min_lr when soft_start > 0
    stretched = optim.SoftStartCosineSchedule(base_lr=1e-4, min_lr=1e-7, soft_start=0.3, total_steps=100,
                                              reach_min_at_end=True)
    assert stretched(65) == pytest.approx(1e-7 + span / 2)
    assert stretched(100) == pytest.approx(1e-7)


def test_early_stopping_annealing_soft_starts_then_anneals_and_stops_on_validation():
    schedule = optim.EarlyStoppingAnnealingSchedule(base_lr=1e-3, min_lr=1e-5, soft_start_steps=10,
                                                    annealing_steps=20, patience_epochs=2)
    assert schedule(5) == pytest.approx(1e-4)
    assert schedule(50) == pytest.approx(1e-3)  # a fixed-epoch run without validation keeps base_lr
    assert schedule.observe_validation(epoch=1, cost=1.0, step=25)
    assert schedule.observe_validation(epoch=2, cost=0.9, step=50)
    assert schedule.observe_validation(epoch=3, cost=1.0, step=75)
    assert schedule.annealing_start_step is None
    assert schedule.observe_validation(epoch=4, cost=1.0, step=100)  # no gain for 2 epochs: anneal
    assert (schedule.annealing_start_step, schedule.best_cost, schedule.best_epoch) == (100, 1.0, 4)
    assert schedule(110) == pytest.approx(1e-4)
    assert schedule(120) == pytest.approx(1e-5)
    assert schedule(200) == pytest.approx(1e-5)
    assert schedule.observe_validation(epoch=5, cost=1.1, step=110)
    assert schedule.observe_validation(epoch=6, cost=1.1, step=115)  # annealing not finished yet
    assert not schedule.observe_validation(epoch=7, cost=1.1, step=125)


# --------------------------------------------------------------------------- regularizers and optimizers
def test_l2_is_weight_decay_on_kernels_in_scope_only():
    model = tiny_model()
    conv, bn, fc = model[0], model[1], model[5]
    optimizer = optim.build_optimizer(model, optim.OptimizerSpec("sgd", momentum=0.9),
                                      optim.RegularizerSpec("L2", 1e-4), base_lr=0.1)
    kernels, rest = optimizer.param_groups
    assert [id(p) for p in kernels["params"]] == [id(conv.weight), id(fc.weight)]
    assert kernels["weight_decay"] == 2e-4
    assert [id(p) for p in rest["params"]] == [id(conv.bias), id(bn.weight), id(bn.bias), id(fc.bias)]
    assert rest["weight_decay"] == 0.0

    conv_only = optim.RegularizerSpec("L2", 1e-4, layer_types=(nn.Conv2d,))
    kernels, rest = optim.build_optimizer(model, optim.OptimizerSpec(), conv_only, 0.1).param_groups
    assert [id(p) for p in kernels["params"]] == [id(conv.weight)]
    assert id(fc.weight) in {id(p) for p in rest["params"]}


def test_l1_term_sums_kernel_magnitudes_only():
    model = tiny_model()
    conv, fc = model[0], model[5]
    with torch.no_grad():
        conv.weight.fill_(0.5)
        fc.weight.fill_(-0.25)
        conv.bias.fill_(7.0)
        fc.bias.fill_(7.0)
    l1 = optim.RegularizerSpec("L1", 1e-3)
    expected = 1e-3 * (0.5 * conv.weight.numel() + 0.25 * fc.weight.numel())
    assert optim.regularization_loss(model, l1, "cpu").item() == pytest.approx(expected)
    assert optim.regularization_loss(model, optim.RegularizerSpec("L2", 1e-3), "cpu").item() == 0.0
    [group] = optim.build_optimizer(model, optim.OptimizerSpec(), l1, 0.1).param_groups
    assert group["weight_decay"] == 0.0  # L1 is a loss term, never weight decay


def test_frozen_model_is_refused():
    model = tiny_model().requires_grad_(False)
    with pytest.raises(TaoctlError, match="nothing left to train"):
        optim.build_optimizer(model, optim.OptimizerSpec(), optim.RegularizerSpec(), 0.1)


def test_keras_decay_divides_the_scheduled_rate():
    model = tiny_model()
    schedule = optim.StepSchedule(base_lr=0.1, gamma=1.0, step_size=10, total_steps=100)
    optimizer = optim.build_optimizer(model, optim.OptimizerSpec(), optim.RegularizerSpec(), schedule.base_lr)
    scheduler = optim.build_scheduler(optimizer, schedule, decay=0.5)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / (1 + 0.5 * 4))


# --------------------------------------------------------------------------- classification: as before
# The formulas classification trained with before taoctl.engine.optim (tasks/classification/common.py's
# lr_schedule, make_optimizer and make_scheduler), kept here as the expectation.
def old_lr_schedule(lr_config, world_size, total_steps):
    which = lr_config.WhichOneof("lr_scheduler")
    total = max(int(total_steps), 1)
    if which == "step":
        cfg = lr_config.step
        base = cfg.learning_rate * world_size
        steps_per_gamma = max(total * cfg.step_size // 100, 1)
        gamma = cfg.gamma if cfg.gamma > 0 else 1.0
        return base, lambda step: base * gamma ** (step / steps_per_gamma)
    if which == "soft_anneal":
        cfg = lr_config.soft_anneal
        base = cfg.learning_rate * world_size
        points = list(cfg.annealing_points)
        divider = cfg.annealing_divider or 10.0

        def soft_anneal(step):
            progress = min(step / total, 1.0)
            if progress < cfg.soft_start:
                t = progress / cfg.soft_start
                return t * base + (1 - t) * 3e-4
            return base / divider ** sum(progress > p for p in points)

        return base, soft_anneal
    cfg = lr_config.cosine
    base = cfg.learning_rate * world_size
    low = base * cfg.min_lr_ratio

    def cosine(step):
        progress = min(step / total, 1.0)
        if cfg.soft_start > 0 and progress < cfg.soft_start:
            return low + (base - low) * progress / cfg.soft_start
        t = (progress - cfg.soft_start) / max(1.0 - cfg.soft_start, 1e-8)
        return low + (base - low) * (1 + math.cos(math.pi * t)) / 2

    return base, cosine


def old_make_optimizer(model, train_config, base_lr):
    reg = train_config.reg_config
    kind = (reg.type or "None").strip().upper()
    scopes = {s.strip().lower() for s in (reg.scope or "Conv2D,Dense").split(",") if s.strip()}
    types = tuple(t for s, t in (("conv2d", nn.Conv2d), ("dense", nn.Linear)) if s in scopes)
    scoped = [] if kind == "NONE" else [m.weight for m in model.modules() if isinstance(m, types)]
    wd = float(reg.weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    scoped_ids = {id(p) for p in scoped}
    if kind == "L2" and wd > 0:
        groups = [{"params": [p for p in trainable if id(p) in scoped_ids], "weight_decay": 2 * wd},
                  {"params": [p for p in trainable if id(p) not in scoped_ids], "weight_decay": 0.0}]
    else:
        groups = [{"params": trainable, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    which = train_config.optimizer.WhichOneof("optim")
    if which == "sgd" or which is None:
        cfg = train_config.optimizer.sgd
        optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum,
                                    nesterov=bool(cfg.nesterov and cfg.momentum))
    elif which == "adam":
        cfg = train_config.optimizer.adam
        optimizer = torch.optim.Adam(groups, lr=base_lr, betas=(cfg.beta_1 or 0.9, cfg.beta_2 or 0.999),
                                     eps=cfg.epsilon or 1e-7)
    else:
        cfg = train_config.optimizer.rmsprop
        optimizer = torch.optim.RMSprop(groups, lr=base_lr, alpha=cfg.rho or 0.9, eps=cfg.epsilon or 1e-7)
    return optimizer, (scoped if kind == "L1" else []), (wd if kind == "L1" else 0.0), float(cfg.decay)


TRAIN_CONFIGS = {
    "step-sgd-L2": """
        optimizer { sgd { lr: 0.01 momentum: 0.9 nesterov: true decay: 0.01 } }
        lr_config { step { learning_rate: 0.006 step_size: 25 gamma: 0.5 } }
        reg_config { type: "L2" scope: "Conv2D,Dense" weight_decay: 0.00005 }""",
    "soft_anneal-adam-L1": """
        optimizer { adam { lr: 0.01 epsilon: 0 decay: 0.001 } }
        lr_config { soft_anneal { learning_rate: 0.005 soft_start: 0.2 annealing_points: [0.4, 0.7]
                                  annealing_divider: 5 } }
        reg_config { type: "L1" scope: "Conv2D,Dense" weight_decay: 0.0001 }""",
    "cosine-rmsprop-none": """
        optimizer { rmsprop { lr: 0.01 rho: 0.8 epsilon: 0.000001 } }
        lr_config { cosine { learning_rate: 0.004 min_lr_ratio: 0.1 soft_start: 0.25 } }
        reg_config { type: "None" }""",
    "cosine-sgd-L2-conv-only": """
        optimizer { sgd { lr: 0.01 momentum: 0.0 nesterov: true } }
        lr_config { cosine { learning_rate: 0.01 min_lr_ratio: 0.01 soft_start: 0 } }
        reg_config { type: "l2" scope: "Conv2D" weight_decay: 0.001 }""",
}


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_classification_trains_exactly_as_before(name):
    train_config = text_format.Parse(TRAIN_CONFIGS[name], classification_pb2.TrainConfig())
    total_steps, world_size = 16, 2
    old_model, new_model = tiny_model(), tiny_model()

    base, schedule = old_lr_schedule(train_config.lr_config, world_size, total_steps)
    old_optimizer, l1_weights, l1, decay = old_make_optimizer(old_model, train_config, base)
    old_scheduler = torch.optim.lr_scheduler.LambdaLR(old_optimizer,
                                                      lambda step: schedule(step) / base / (1.0 + decay * step))

    spec = optim.from_makenet(train_config, world_size, total_steps)
    new_optimizer = optim.build_optimizer(new_model, spec.optimizer, spec.regularizer, spec.schedule.base_lr)
    new_scheduler = optim.build_scheduler(new_optimizer, spec.schedule, spec.optimizer.decay)

    assert type(new_optimizer) is type(old_optimizer)
    assert new_optimizer.defaults == old_optimizer.defaults
    old_names = {id(p): n for n, p in old_model.named_parameters()}
    new_names = {id(p): n for n, p in new_model.named_parameters()}
    assert [([new_names[id(p)] for p in g["params"]], g["weight_decay"]) for g in new_optimizer.param_groups] == \
           [([old_names[id(p)] for p in g["params"]], g["weight_decay"]) for g in old_optimizer.param_groups]

    generator = torch.Generator().manual_seed(1)
    for _ in range(total_steps):
        x, y = torch.randn(4, 3, 8, 8, generator=generator), torch.randn(4, 3, generator=generator)
        for model, optimizer, scheduler, penalty in (
                (old_model, old_optimizer, old_scheduler,
                 lambda loss: loss + l1 * sum(w.abs().sum() for w in l1_weights) if l1 else loss),
                (new_model, new_optimizer, new_scheduler,
                 lambda loss: loss + optim.regularization_loss(new_model, spec.regularizer, loss.device))):
            optimizer.zero_grad()
            penalty(nn.functional.mse_loss(model(x), y)).backward()
            optimizer.step()
            scheduler.step()
        assert [g["lr"] for g in new_optimizer.param_groups] == [g["lr"] for g in old_optimizer.param_groups]
    for (name_old, old), (name_new, new) in zip(old_model.state_dict().items(), new_model.state_dict().items()):
        assert name_old == name_new and torch.equal(old, new), name_old


# --------------------------------------------------------------------------- adapters on real spec files
@needs_corpus
def test_from_makenet_reads_a_tao_classification_spec():
    path = SPECS / "tao_tensorflow1_backend/nvidia_tao_tf1/cv/makenet/experiment_specs/default_spec.txt"
    train_config = classification_spec.load(path).train_config
    spec = optim.from_makenet(train_config, world_size=2, total_steps=1000)
    assert spec.optimizer == optim.OptimizerSpec("sgd", momentum=pytest.approx(0.9), nesterov=False, decay=0.0)
    assert spec.regularizer == optim.RegularizerSpec("L2", pytest.approx(5e-5), (nn.Conv2d, nn.Linear))
    assert isinstance(spec.schedule, optim.SoftAnnealSchedule)
    assert spec.schedule.base_lr == pytest.approx(0.1)
    assert spec.schedule.annealing_points == pytest.approx((0.3, 0.6, 0.8))
    assert (spec.schedule.annealing_divider, spec.schedule.total_steps) == (10.0, 1000)
    assert spec.schedule(1000) == pytest.approx(1e-4)


@needs_corpus
def test_from_cv_common_reads_a_tao_yolo_v3_spec():
    training_config = yolo_v3_spec.load(STARTER / "yolo_v3/specs/yolo_v3_train_resnet18_kitti.txt").training_config
    spec = optim.from_cv_common(training_config, steps_per_epoch=10, lr_multiplier=2)
    assert spec.optimizer == optim.OptimizerSpec("adam", betas=pytest.approx((0.9, 0.999)),
                                                 epsilon=pytest.approx(1e-7), amsgrad=False)
    assert spec.regularizer == optim.RegularizerSpec("L1", pytest.approx(3e-5))
    schedule = spec.schedule
    assert isinstance(schedule, optim.SoftStartAnnealingSchedule)
    assert (schedule.base_lr, schedule.min_lr) == (pytest.approx(2e-4), pytest.approx(2e-6))
    assert (schedule.soft_start, schedule.annealing, schedule.total_steps) == (pytest.approx(0.1),
                                                                               pytest.approx(0.5), 800)


@needs_corpus
def test_from_cv_common_reads_a_tao_detectnet_v2_spec():
    path = STARTER / "detectnet_v2/specs/detectnet_v2_train_resnet18_kitti.txt"
    training_config = detectnet_v2_spec.load(path).training_config
    spec = optim.from_cv_common(training_config, steps_per_epoch=100)
    assert spec.optimizer == optim.OptimizerSpec("adam", betas=pytest.approx((0.9, 0.999)),
                                                 epsilon=pytest.approx(1e-8), amsgrad=False)
    assert spec.regularizer == optim.RegularizerSpec("L1", pytest.approx(3e-9))
    schedule = spec.schedule
    assert isinstance(schedule, optim.SoftStartAnnealingSchedule)
    assert (schedule.base_lr, schedule.min_lr) == (pytest.approx(5e-5), pytest.approx(5e-7))
    assert schedule.total_steps == 12000
    assert schedule(6000) == pytest.approx(5e-5)


def test_from_cv_common_cosine_and_early_stopping_schedules():
    yolo = text_format.Parse("""num_epochs: 10
        learning_rate { soft_start_cosine_annealing_schedule { min_learning_rate: 1e-7 max_learning_rate: 1e-4
                                                               soft_start: 0.3 } }
        optimizer { sgd { momentum: 0.9 nesterov: true } }""", yolo_v3_pb2.TrainingConfig())
    spec = optim.from_cv_common(yolo, steps_per_epoch=5)
    assert spec.schedule == optim.SoftStartCosineSchedule(pytest.approx(1e-4), pytest.approx(1e-7),
                                                          pytest.approx(0.3), 50)
    assert spec.optimizer == optim.OptimizerSpec("sgd", momentum=pytest.approx(0.9), nesterov=True)
    assert spec.regularizer == optim.RegularizerSpec("NO_REG")

    detectnet = text_format.Parse("""num_epochs: 20
        learning_rate { early_stopping_annealing_schedule { min_learning_rate: 1e-6 max_learning_rate: 1e-4
                        soft_start_epochs: 2 annealing_epochs: 3 patience_steps: 4 } }
        optimizer { adam { epsilon: 1e-8 beta1: 0.9 beta2: 0.999 } }""", detectnet_v2_pb2.TrainingConfig())
    schedule = optim.from_cv_common(detectnet, steps_per_epoch=10).schedule
    assert isinstance(schedule, optim.EarlyStoppingAnnealingSchedule)
    assert (schedule.soft_start_steps, schedule.annealing_steps, schedule.patience_epochs) == (20, 30, 4)
    assert schedule(10) == pytest.approx(1e-5)


# --------------------------------------------------------------------------- error lines
@pytest.mark.parametrize("text, message", [
    ('lr_config { }', "train_config.lr_config: set one of step, soft_anneal or cosine"),
    ('lr_config { step { learning_rate: 0 } }', "train_config.lr_config: learning_rate must be positive"),
    ('lr_config { soft_anneal { learning_rate: 0.1 soft_start: 0.5 annealing_points: 0.3 } }',
     "train_config.lr_config.soft_anneal: annealing_points must be increasing and after soft_start"),
    ('lr_config { step { learning_rate: 0.1 } } reg_config { type: "L3" }',
     'train_config.reg_config.type: unknown regularizer "L3"; use L1, L2 or None'),
    ('lr_config { step { learning_rate: 0.1 } } reg_config { type: "L2" scope: "Conv2D,Conv3D" }',
     "train_config.reg_config.scope: unknown layer type(s) ['conv3d']; use Conv2D, Dense"),
])
def test_makenet_errors_name_the_field(text, message):
    train_config = text_format.Parse(text, classification_pb2.TrainConfig())
    with pytest.raises(TaoctlError) as error:
        optim.from_makenet(train_config, 1, 100)
    assert str(error.value) == message


@pytest.mark.parametrize("message_type, text, message", [
    (yolo_v3_pb2.TrainingConfig, "num_epochs: 1 optimizer { sgd { } }",
     "training_config.learning_rate: set one of soft_start_annealing_schedule or "
     "soft_start_cosine_annealing_schedule"),
    (detectnet_v2_pb2.TrainingConfig, "num_epochs: 1 optimizer { adam { epsilon: 1e-8 } }",
     "training_config.learning_rate: set one of soft_start_annealing_schedule or early_stopping_annealing_schedule"),
    (yolo_v3_pb2.TrainingConfig,
     "num_epochs: 1 learning_rate { soft_start_annealing_schedule { min_learning_rate: 1e-6 max_learning_rate: 1e-4"
     " soft_start: 0.6 annealing: 0.5 } }",
     "training_config.learning_rate.soft_start_annealing_schedule: soft_start and annealing must satisfy "
     "0 <= soft_start <= annealing <= 1 (got 0.6, 0.5)"),
    (yolo_v3_pb2.TrainingConfig,
     "num_epochs: 1 learning_rate { soft_start_cosine_annealing_schedule { max_learning_rate: 1e-4 } }",
     "training_config.learning_rate.soft_start_cosine_annealing_schedule.min_learning_rate: must be positive"),
    (yolo_v3_pb2.TrainingConfig,
     "num_epochs: 1 learning_rate { soft_start_cosine_annealing_schedule { min_learning_rate: 1e-6 "
     "max_learning_rate: 1e-4 } }",
     "training_config.optimizer: set one of adam, sgd or rmsprop"),
    (yolo_v3_pb2.TrainingConfig,
     "num_epochs: 1 learning_rate { soft_start_cosine_annealing_schedule { min_learning_rate: 1e-6 "
     "max_learning_rate: 1e-4 } } optimizer { adam { beta1: 0.9 beta2: 0.999 } }",
     "training_config.optimizer.adam.epsilon: must be positive"),
    (yolo_v3_pb2.TrainingConfig,
     "num_epochs: 1 learning_rate { soft_start_cosine_annealing_schedule { min_learning_rate: 1e-6 "
     "max_learning_rate: 1e-4 } } optimizer { sgd { } } regularizer { type: L2 }",
     "training_config.regularizer.weight: must be in (0, 1) for L2 (got 0)"),
    (yolo_v3_pb2.TrainingConfig, "optimizer { sgd { } }", "training_config.num_epochs: must be at least 1"),
])
def test_cv_common_errors_name_the_field(message_type, text, message):
    training_config = text_format.Parse(text, message_type())
    with pytest.raises(TaoctlError) as error:
        optim.from_cv_common(training_config, steps_per_epoch=10)
    assert str(error.value) == message


def _nemo_optim(**sched):
    from taoctl.tasks.nlp_common.sections import Optim, Sched

    return Optim(name="adamw", lr=1e-4, weight_decay=0.01, sched=Sched(**sched) if sched else None)


def test_nemo_warmup_annealing_ramps_then_decays_linearly_to_zero():
    spec = optim.from_nemo(_nemo_optim(name="WarmupAnnealing", warmup_ratio=0.1), steps_per_epoch=50, epochs=2)
    schedule = spec.schedule
    assert spec.optimizer.kind == "adamw" and spec.optimizer.weight_decay == 0.01
    assert schedule.warmup_steps == 10 and schedule(0) < schedule(9) < 1e-4
    assert schedule(10) == pytest.approx(1e-4)
    assert schedule(55) == pytest.approx(1e-4 * 0.5)
    assert schedule(100) == pytest.approx(0.0)


def test_nemo_schedules_and_their_shapes():
    cosine = optim.from_nemo(_nemo_optim(name="CosineAnnealing", warmup_ratio=0.0), 10, 1).schedule
    root = optim.from_nemo(_nemo_optim(name="SquareRootAnnealing", warmup_steps=0), 10, 1).schedule
    constant = optim.from_nemo(_nemo_optim(), 10, 1).schedule
    assert cosine(5) == pytest.approx(0.5e-4) and root(5) == pytest.approx(1e-4 * math.sqrt(0.5))
    assert constant(0) == constant(9) == 1e-4


def test_nemo_adamw_decouples_weight_decay():
    model = nn.Linear(3, 2)
    spec = optim.from_nemo(_nemo_optim(), 1, 1)
    built = optim.build_optimizer(model, spec.optimizer, spec.regularizer, spec.schedule.base_lr)
    assert isinstance(built, torch.optim.AdamW) and built.param_groups[0]["weight_decay"] == 0.01


def test_nemo_unknown_optimizer_is_one_line():
    bad = _nemo_optim()
    bad.name = "lamb"
    with pytest.raises(TaoctlError, match="optim.name: unknown optimizer 'lamb'"):
        optim.from_nemo(bad, 1, 1)
