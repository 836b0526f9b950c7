"""The classification training run: data, model, optimizer and the engine's Trainer, from the spec."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taoctl.engine import distributed, model_parallel
from taoctl.engine.data import imagefolder
from taoctl.engine.device import model_parallel_devices, select_device
from taoctl.engine.metrics.classification import ClassificationMeter
from taoctl.engine.trainer import Hook, Trainer, prepare_results_dir, seed_everything
from taoctl.errors import TaoctlError
from taoctl.tasks.classification import common


def _echo(message: str) -> None:
    if distributed.current().is_main:
        print(message, flush=True)


def load_split(path, classes, shape, interp, mode, strict, what, threads):
    """Scan and cache one ImageFolder split, printing (or, strict, raising on) its problems."""
    index = imagefolder.scan_image_folder(path, classes, what=what)
    arrays, labels, _ = imagefolder.cache_images(index, shape[1:], shape[0], mode, interp, threads=threads)
    summary = index.summary()
    if summary:
        _echo("Warning: " + summary)
    index.check(strict)
    return index, arrays, labels


def evaluate_arrays(log_probs_fn, arrays, labels, num_classes, batch_size, top_k=1) -> ClassificationMeter:
    """Run ``log_probs_fn`` (uint8 NCHW -> log-probs) over cached images; NLL is the loss."""
    meter = ClassificationMeter(num_classes, top_k)
    for start in range(0, len(arrays), batch_size):
        chunk = np.stack([a.transpose(2, 0, 1) for a in arrays[start:start + batch_size]])
        target = np.asarray(labels[start:start + batch_size])
        log_probs = log_probs_fn(chunk)
        loss_sum = float(-log_probs[np.arange(len(target)), target].sum())
        meter.update(log_probs, target, loss_sum)
    return meter


class VisualizerHook(Hook):
    """TAO's visualizer: sample training images and weight histograms in TensorBoard."""

    main_only = True

    def __init__(self, log_dir: Path, dataset, num_images: int, histograms: bool):
        self.log_dir, self.dataset = log_dir, dataset
        self.num_images, self.histograms = max(int(num_images or 3), 1), histograms
        self.writer = None

    def before_train(self, trainer):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir))

    def after_epoch(self, trainer, epoch, logs):
        images = torch.stack([self.dataset[i][0] for i in range(min(self.num_images, len(self.dataset)))])
        self.writer.add_images("train/augmented_images", images, epoch, dataformats="NCHW")
        if self.histograms:
            for name, param in trainer.bare_model.named_parameters():
                if param.dim() > 1:
                    self.writer.add_histogram(f"weights/{name}", param.detach().cpu(), epoch)
        self.writer.flush()

    def after_train(self, trainer, status, message):
        if self.writer is not None:
            self.writer.close()


def _load_pretrained(model: nn.Module, path: str, key: str | None) -> None:
    from taoctl.engine.pretrained import load_pretrained

    load_pretrained(model, path, key=key, log=_echo)


def _distillation(train_config):
    """(teacher path, alpha, temperature) when the spec asks to distil, else None."""
    if "distillation" not in type(train_config).DESCRIPTOR.fields_by_name or not train_config.HasField("distillation"):
        return None
    cfg = train_config.distillation
    if not cfg.teacher_model_path:
        raise TaoctlError("train_config.distillation.teacher_model_path is required to distil")
    alpha = cfg.alpha if cfg.alpha else 0.5
    if not 0.0 <= alpha <= 1.0:
        raise TaoctlError(f"train_config.distillation.alpha must be in [0, 1], got {alpha}")
    return cfg.teacher_model_path, alpha, cfg.temperature if cfg.temperature else 4.0


@contextlib.contextmanager
def _field_errors(field: str):
    """Prefix the engine's errors with the spec field they are about."""
    try:
        yield
    except TaoctlError as exc:
        raise TaoctlError(f"{field}: {exc}") from None


def _model_parallel_devices(fractions, gpu_index):
    """The GPUs to split the model across, or None when the spec asks for no split (one part or none)."""
    if not fractions:
        return None
    with _field_errors("train_config.model_parallelism"):
        model_parallel.check_fractions(fractions)
        return model_parallel_devices(len(fractions), gpu_index) if len(fractions) > 1 else None


def run_training(experiment, spec_path, results_dir, key=None, classmap=None, init_epoch=1, strict=False,
                 force=False, gpus=1, gpu_index=None, use_amp=False, log_file=None) -> nn.Module:
    mc, tc = experiment.model_config, experiment.train_config
    spec_text = Path(spec_path).read_text()
    dist = distributed.init_distributed()
    fractions = list(tc.model_parallelism)
    split_devices = _model_parallel_devices(fractions, gpu_index)
    device = split_devices[0] if split_devices else select_device(gpus, gpu_index, use_amp)
    if dist.is_main:
        prepare_results_dir(results_dir, spec_text, force, task=common.TASK)
    distributed.barrier()
    results = Path(results_dir)
    seed = int(tc.random_seed) or 42
    seed_everything(seed + dist.rank)

    shape = common.input_shape(mc)
    interp = common.interpolation(mc)
    threads = common.cpu_threads()
    classes = common.read_classmap(classmap) if classmap else None
    train_mode = "train" if tc.enable_random_crop else "resize"
    train_index, train_arrays, train_labels = load_split(tc.train_dataset_path, classes, shape, interp, train_mode,
                                                         strict, "train_config.train_dataset_path", threads)
    classes = train_index.classes
    val_mode = "center" if tc.enable_center_crop else "resize"
    _, val_arrays, val_labels = load_split(tc.val_dataset_path, classes, shape, interp, val_mode, strict,
                                           "train_config.val_dataset_path", threads)
    counts = train_index.class_counts()
    _echo(f"Classes ({len(classes)}): " + ", ".join(f"{c} ({n})" for c, n in zip(classes, counts)))
    _echo(f"Train images: {len(train_arrays)}, val images: {len(val_arrays)}, input {shape[0]}x{shape[1]}x{shape[2]}")
    if dist.is_main:
        common.write_json(results / "classmap.json", {name: i for i, name in enumerate(classes)})

    arguments = common.model_arguments(mc)
    model = common.build_model(arguments, len(classes), list(mc.freeze_blocks), bool(mc.freeze_bn))
    if tc.pretrained_model_path:
        _load_pretrained(model, tc.pretrained_model_path, key)
        # Freezing must hold for the loaded weights too (the loader may replace modules).
        model.freeze_blocks(list(mc.freeze_blocks))
        model.set_freeze_bn(bool(mc.freeze_bn))
    if split_devices:
        with _field_errors("train_config.model_parallelism"):
            segments = model_parallel.split_model(model, fractions, split_devices, torch.zeros(1, *shape))
        _echo("Model parallelism: " + "; ".join(segment.describe() for segment in segments))
    normalizer = common.normalizer_from_spec(tc, shape[0])

    transform = imagefolder.train_transform(shape[1:], bool(tc.enable_random_crop), bool(tc.enable_color_augmentation),
                                            not tc.disable_horizontal_flip, interp, seed=seed + dist.rank)
    dataset = imagefolder.CachedImageDataset(train_arrays, train_labels, transform)
    batch_size = int(tc.batch_size_per_gpu) or 32
    sampler = distributed.distributed_sampler(dataset, shuffle=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    workers = min(int(tc.n_workers), max(threads // 2, 0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                         num_workers=workers, drop_last=len(dataset) > batch_size,
                                         generator=generator, persistent_workers=workers > 0,
                                         worker_init_fn=imagefolder.seed_worker_transform)
    epochs = int(tc.n_epochs) or 1
    steps = len(loader) * epochs
    base_lr, schedule = common.lr_schedule(tc.lr_config, dist.world_size, steps)
    optimizer, l1_weights, l1 = common.make_optimizer(model, tc, base_lr)
    scheduler = common.make_scheduler(optimizer, schedule, base_lr)
    smoothing = float(tc.label_smoothing)
    mixup = float(tc.mixup_alpha)
    mix_rng = np.random.default_rng(seed + 1000 * dist.rank)

    teacher = None
    distil = _distillation(tc)
    if distil:
        teacher, _ = common.load_classifier(distil[0], key)
        teacher.to(device).eval()
        _echo(f"Distilling from {distil[0]} (alpha {distil[1]}, temperature {distil[2]})")

    def loss_fn(net, batch):
        images, labels = batch
        x = normalizer(images)
        targets = torch.nn.functional.one_hot(labels, len(classes)).float()
        if smoothing:
            targets = targets * (1 - smoothing) + smoothing / len(classes)
        if mixup > 0:
            lam = float(mix_rng.beta(mixup, mixup))
            perm = torch.randperm(len(x), device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            targets = lam * targets + (1 - lam) * targets[perm]
        logits = net(x)
        # A model split across GPUs answers on its last one.
        labels, targets = labels.to(logits.device), targets.to(logits.device)
        loss = torch.sum(-targets * torch.log_softmax(logits, dim=1), dim=1).mean()
        if teacher is not None:
            _, alpha, temperature = distil
            with torch.no_grad():
                soft = torch.softmax(teacher(x) / temperature, dim=1).to(logits.device)
            kd = torch.nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), soft,
                                            reduction="batchmean") * temperature ** 2
            loss = (1 - alpha) * loss + alpha * kd
        if l1:
            loss = loss + l1 * sum(w.abs().sum().to(loss.device) for w in l1_weights)
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return loss, {"accuracy": accuracy}

    def evaluate(net):
        net.eval()

        def log_probs(chunk):
            with torch.no_grad():
                return torch.log_softmax(net(normalizer(torch.from_numpy(chunk).to(device))).float(), 1).cpu().numpy()

        meter = evaluate_arrays(log_probs, val_arrays, val_labels, len(classes), max(batch_size, 32))
        report = meter.report(classes)
        return {"loss": report["loss"], "accuracy": report["top1_accuracy"]}

    manifest = common.manifest_for(arguments, classes, shape, common.preprocess_record(tc), interp, spec_text)
    hooks = []
    if tc.HasField("visualizer") and tc.visualizer.enabled:
        hooks.append(VisualizerHook(results / "tensorboard" / "visualizer", dataset, tc.visualizer.num_images,
                                    bool(tc.visualizer.weight_histograms)))
    model_name = _model_name(arguments)
    trainer = Trainer(model, optimizer, loader, loss_fn, results, epochs, model_name, manifest, key=key,
                      scheduler=scheduler, evaluate=evaluate, device=device, amp=use_amp, seed=seed, log_file=log_file,
                      init_epoch=init_epoch, hooks=hooks)
    model = trainer.train()
    if trainer.history and dist.is_main:
        last = trainer.history[-1]
        _echo(f"Final: epoch {last['epoch']} val accuracy {last.get('val_accuracy', float('nan')) * 100:.2f} % "
              f"val loss {last.get('val_loss', float('nan')):.4f}; model {trainer.weights_path(trainer.last_epoch)}")
    return model


def _model_name(arguments: dict) -> str:
    from taoctl.engine.backbones import resolve_arch

    arch = arguments["arch"]
    # TAO names checkpoints after the family (resnet_080.tlt), other archs by their name.
    name = resolve_arch(arch, arguments.get("n_layers"))
    family = str(arch).split(":")[0].lower()
    return family if arguments.get("n_layers") else name
