"""classification (TAO makenet / classification_tf1) on the engine's task contract.

What is classification's own: ImageFolder data with its class map, the softmax cross-entropy
step (label smoothing, mixup, distillation), top-k / per-class metrics with a confusion matrix,
``result.csv`` inference, the classifier-input pruning extension and the export adapter
(softmax output, DeepStream network-type 1). Everything else is the engine's runners.

What TAO's users' scripts read is TAO's (its makenet evaluate and inference scripts): the
``predictions/Softmax`` output, results.json's ``top_k_accuracy``, the ``Evaluation Loss`` /
``Evaluation Top K accuracy`` lines, ``-i``'s ``Current predictions`` / ``Class label`` /
``Class name`` lines, and ``-d``'s header-less ``result.csv`` (path, class name, confidence).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taoctl.engine import distributed, export, model_parallel, optim
from taoctl.engine.data import imagefolder
from taoctl.engine.device import cpu_threads, model_parallel_devices, select_device
from taoctl.engine.metrics.classification import ClassificationMeter, format_report, save_confusion_png
from taoctl.engine.task import Evaluator, Run, Task, TrainData, Validation, is_onnx
from taoctl.engine.trainer import Hook
from taoctl.errors import TaoctlError
from taoctl.fileio import write_atomic
from taoctl.tasks.classification import common


# --------------------------------------------------------------------------- evaluation
class ClassificationEvaluator(Evaluator):
    """Loss, top-k accuracy, per-class precision/recall and the confusion matrix over cached images."""

    def __init__(self, arrays, labels, classes: list[str], batch_size: int, top_k: int = 1, dataset: str = ""):
        self.arrays, self.labels, self.classes = arrays, labels, classes
        self.batch_size, self.top_k, self.dataset = batch_size, top_k, dataset

    def run(self, predictor) -> dict:
        meter = ClassificationMeter(len(self.classes), self.top_k)
        started = time.perf_counter()
        for start in range(0, len(self.arrays), self.batch_size):
            chunk = np.stack([a.transpose(2, 0, 1) for a in self.arrays[start:start + self.batch_size]])
            target = np.asarray(self.labels[start:start + self.batch_size])
            log_probs = np.log(np.clip(predictor(chunk)[0], 1e-12, 1.0))
            meter.update(log_probs, target, float(-log_probs[np.arange(len(target)), target].sum()))
        seconds = time.perf_counter() - started
        report = meter.report(self.classes)
        # TAO's key (eval_config.top_k's accuracy) beside taoctl's top1_accuracy and top{k}_accuracy.
        report["top_k_accuracy"] = report[f"top{report['top_k']}_accuracy"]
        report.update({"model": predictor.source, "dataset": self.dataset, "seconds": seconds,
                       "images_per_second": len(self.arrays) / max(seconds, 1e-9)})
        return report

    def summary(self, report: dict) -> dict[str, float]:
        return {"loss": report["loss"], "accuracy": report["top1_accuracy"]}

    def write(self, report: dict, out_dir: Path) -> None:
        print(f"Evaluation Loss: {report['loss']}", flush=True)
        print(f"Evaluation Top K accuracy: {report['top_k_accuracy']}", flush=True)
        text = format_report(report)
        print(text, flush=True)
        print(f"({report['num_images']} images in {report['seconds']:.2f} s, {report['images_per_second']:.1f} "
              f"images/s)", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        common.write_json(out_dir / "results.json", report)
        write_atomic(out_dir / "evaluation.txt", text + "\n")
        save_confusion_png(report, out_dir / "confusion_matrix.png")
        print(f"Wrote {out_dir / 'results.json'}, {out_dir / 'confusion_matrix.png'}", flush=True)


def load_split(run: Run, path, classes, shape, interp, mode, field: str):
    """Scan and cache one ImageFolder split, printing (or, --strict, raising on) its problems."""
    index = imagefolder.scan_image_folder(path, classes, what=field)
    arrays, labels, _ = imagefolder.cache_images(index, shape[1:], shape[0], mode, interp, threads=cpu_threads())
    summary = index.summary()
    if summary:
        run.echo("Warning: " + summary)
    index.check(run.strict)
    return index, arrays, labels


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


@contextlib.contextmanager
def _field_errors(field: str):
    """Prefix the engine's errors with the spec field they are about."""
    try:
        yield
    except TaoctlError as exc:
        raise TaoctlError(f"{field}: {exc}") from None


class Distillation:
    """train_config.distillation: soft targets from the unpruned teacher (taoctl extension)."""

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float):
        self.teacher, self.alpha, self.temperature = teacher, alpha, temperature

    @classmethod
    def from_spec(cls, run: Run, train_config, device) -> "Distillation | None":
        if not train_config.HasField("distillation"):
            return None
        cfg = train_config.distillation  # teacher_model_path and alpha were checked when the spec loaded
        alpha = cfg.alpha if cfg.alpha else 0.5
        temperature = cfg.temperature if cfg.temperature else 4.0
        teacher, _ = TASK.load_model(cfg.teacher_model_path, run.key)
        run.echo(f"Distilling from {cfg.teacher_model_path} (alpha {alpha}, temperature {temperature})")
        return cls(teacher.to(device).eval(), alpha, temperature)

    def loss(self, x, logits, hard_loss):
        with torch.no_grad():
            soft = torch.softmax(self.teacher(x) / self.temperature, dim=1).to(logits.device)
        kd = torch.nn.functional.kl_div(torch.log_softmax(logits / self.temperature, dim=1), soft,
                                        reduction="batchmean") * self.temperature ** 2
        return (1 - self.alpha) * hard_loss + self.alpha * kd


# TAO's tensor names: DeepStream configs and tao-converter `-o` lists name the Keras softmax's output.
INPUT, OUTPUT = "input_1", "predictions/Softmax"


def top1_agreement(reference: dict[str, np.ndarray], quantised: dict[str, np.ndarray]) -> str:
    agree = (quantised[OUTPUT].argmax(1) == reference[OUTPUT].argmax(1)).mean()
    return f"top-1 agreement {agree * 100:.1f} %"


class _Softmax(nn.Module):
    """Deployed classifiers output probabilities, as TAO's (``predictions/Softmax``) do."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=1)


# --------------------------------------------------------------------------- the task
class ClassificationTask(Task):
    name = common.TASK
    spec_module = "taoctl.tasks.classification.spec"

    # ------------------------------------------------------------------ spec
    def required_spec(self, subtask, flags):
        if subtask == "evaluate" and flags.get("image_dir"):
            return None  # -i replaces eval_config.eval_dataset_path
        return subtask if subtask in ("train", "evaluate") else None

    def dry_run_paths(self, run):
        if run.subtask == "evaluate":
            model = run.flags.get("model_path") or run.spec.eval_config.model_path
            return {"model": model, "data": run.flags.get("image_dir") or run.spec.eval_config.eval_dataset_path,
                    "-cm": run.flags.get("classmap")}
        return super().dry_run_paths(run)

    # ------------------------------------------------------------------ model
    def model_from_manifest(self, manifest):
        return common.build_model(manifest["arch"], len(manifest["class_map"]))

    def manifest(self, run, data, spec_text):
        tc = run.spec.train_config
        return common.manifest_for(data.arguments, data.classes, data.shape, common.preprocess_record(tc),
                                   data.interp, spec_text)

    def model_name(self, run):
        from taoctl.engine.backbones import resolve_arch

        mc = run.spec.model_config
        n_layers = int(mc.n_layers) or None
        # TAO names checkpoints after the family (resnet_080.tlt / .hdf5), other archs by their name.
        return str(mc.arch).split(":")[0].lower() if n_layers else resolve_arch(mc.arch, n_layers)

    def preprocess(self, manifest):
        return common.normalizer_from_manifest(manifest).numpy

    def build_model(self, run, data):
        from taoctl.engine.pretrained import load_pretrained

        mc, tc = run.spec.model_config, run.spec.train_config
        model = common.build_model(data.arguments, len(data.classes), list(mc.freeze_blocks), bool(mc.freeze_bn))
        if tc.pretrained_model_path:
            load_pretrained(model, tc.pretrained_model_path, key=run.key, log=run.echo)
            # Freezing must hold for the loaded weights too (the loader may replace modules).
            model.freeze_blocks(list(mc.freeze_blocks))
            model.set_freeze_bn(bool(mc.freeze_bn))
        if data.split_devices:
            with _field_errors("train_config.model_parallelism"):
                segments = model_parallel.split_model(model, list(tc.model_parallelism), data.split_devices,
                                                      torch.zeros(1, *data.shape))
            run.echo("Model parallelism: " + "; ".join(segment.describe() for segment in segments))
        return model

    # ------------------------------------------------------------------ training
    def _split_devices(self, run):
        """The GPUs train_config.model_parallelism splits the model across, or None (one part or none)."""
        fractions = list(run.spec.train_config.model_parallelism)
        if not fractions:
            return None
        with _field_errors("train_config.model_parallelism"):
            model_parallel.check_fractions(fractions)
            return model_parallel_devices(len(fractions), run.flags.get("gpu_index")) if len(fractions) > 1 else None

    def training_device(self, run):
        split = self._split_devices(run)
        return split[0] if split else select_device(run.flag("gpus", 1), run.flags.get("gpu_index"),
                                                    bool(run.flags.get("use_amp")))

    def seed(self, run):
        return int(run.spec.train_config.random_seed) or 42

    def epochs(self, run):
        return int(run.spec.train_config.n_epochs) or 1

    def train_data(self, run):
        mc, tc = run.spec.model_config, run.spec.train_config
        shape, interp = common.input_shape(mc), common.interpolation(mc)
        classmap = run.flags.get("classmap")
        classes = common.read_classmap(classmap) if classmap else None
        train_index, train_arrays, train_labels = load_split(
            run, tc.train_dataset_path, classes, shape, interp, "train" if tc.enable_random_crop else "resize",
            "train_config.train_dataset_path")
        classes = train_index.classes
        _, val_arrays, val_labels = load_split(run, tc.val_dataset_path, classes, shape, interp,
                                               "center" if tc.enable_center_crop else "resize",
                                               "train_config.val_dataset_path")
        counts = train_index.class_counts()
        run.echo(f"Classes ({len(classes)}): " + ", ".join(f"{c} ({n})" for c, n in zip(classes, counts)))
        run.echo(f"Train images: {len(train_arrays)}, val images: {len(val_arrays)}, "
                 f"input {shape[0]}x{shape[1]}x{shape[2]}")
        if run.dist.is_main:
            common.write_json(run.results_dir / "classmap.json", {name: i for i, name in enumerate(classes)})
        seed = self.seed(run)
        transform = imagefolder.train_transform(shape[1:], bool(tc.enable_random_crop),
                                                bool(tc.enable_color_augmentation), not tc.disable_horizontal_flip,
                                                interp, seed=seed + run.dist.rank)
        dataset = imagefolder.CachedImageDataset(train_arrays, train_labels, transform)
        batch_size = int(tc.batch_size_per_gpu) or 32
        sampler = distributed.distributed_sampler(dataset, shuffle=True, seed=seed)
        workers = min(int(tc.n_workers), max(cpu_threads() // 2, 0))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None,
                                             sampler=sampler, num_workers=workers,
                                             # Every image is trained each epoch (TAO's Keras iterator keeps the
                                             # last partial batch) except a last batch of one image: BatchNorm
                                             # in training mode fails on one value per channel (1x1 maps).
                                             drop_last=(len(sampler if sampler is not None else dataset)
                                                        % batch_size == 1 and len(dataset) > batch_size),
                                             generator=torch.Generator().manual_seed(seed),
                                             persistent_workers=workers > 0,
                                             worker_init_fn=imagefolder.seed_worker_transform)
        return TrainData(loader, classes=classes, shape=shape, interp=interp, dataset=dataset,
                         arguments=common.model_arguments(mc), val_arrays=val_arrays, val_labels=val_labels,
                         split_devices=self._split_devices(run),
                         normalizer=common.normalizer_from_spec(tc, shape[0]), batch_size=batch_size)

    def optimization(self, run, steps_per_epoch):
        return optim.from_makenet(run.spec.train_config, run.dist.world_size, steps_per_epoch * self.epochs(run))

    def training_step(self, run, model, data):
        tc = run.spec.train_config
        normalizer, num_classes = data.normalizer, len(data.classes)
        smoothing, mixup = float(tc.label_smoothing), float(tc.mixup_alpha)
        mix_rng = np.random.default_rng(self.seed(run) + 1000 * run.dist.rank)
        distillation = Distillation.from_spec(run, tc, run.device)

        def step(net, batch):
            images, labels = batch
            x = normalizer(images)
            targets = torch.nn.functional.one_hot(labels, num_classes).float()
            if smoothing:
                targets = targets * (1 - smoothing) + smoothing / num_classes
            if mixup > 0:
                lam = float(mix_rng.beta(mixup, mixup))
                perm = torch.randperm(len(x), device=x.device)
                x = lam * x + (1 - lam) * x[perm]
                targets = lam * targets + (1 - lam) * targets[perm]
            logits = net(x)
            # A model split across GPUs answers on its last one.
            labels, targets = labels.to(logits.device), targets.to(logits.device)
            loss = torch.sum(-targets * torch.log_softmax(logits, dim=1), dim=1).mean()
            if distillation is not None:
                loss = distillation.loss(x, logits, loss)
            return loss, {"accuracy": (logits.argmax(1) == labels).float().mean().item()}

        return step

    def validation(self, run, data):
        evaluator = ClassificationEvaluator(data.val_arrays, data.val_labels, data.classes,
                                            max(data.batch_size, 32), dataset=run.spec.train_config.val_dataset_path)
        return Validation(evaluator)

    def train_hooks(self, run, data):
        tc = run.spec.train_config
        if tc.HasField("visualizer") and tc.visualizer.enabled:
            return [VisualizerHook(run.results_dir / "tensorboard" / "visualizer", data.dataset,
                                   tc.visualizer.num_images, bool(tc.visualizer.weight_histograms))]
        return []

    def after_training(self, run, trainer):
        if trainer.history:
            last = trainer.history[-1]
            run.echo(f"Final: epoch {last['epoch']} val accuracy {last.get('val_accuracy', float('nan')) * 100:.2f} % "
                     f"val loss {last.get('val_loss', float('nan')):.4f}; model "
                     f"{trainer.weights_path(trainer.last_epoch)}")

    # ------------------------------------------------------------------ evaluate / inference
    def default_model_path(self, run):
        return run.spec.eval_config.model_path or None

    def model_path_hint(self, run):
        return " or set eval_config.model_path"

    def onnx_manifest(self, run, onnx_path):
        mc, tc = run.spec.model_config, run.spec.train_config
        classmap = run.flags.get("classmap")
        if classmap is None:
            beside = Path(onnx_path).with_name("classmap.json")
            classmap = beside if beside.exists() else None
        if classmap is None:
            raise TaoctlError(f"{onnx_path}: pass the class map (-cm classmap.json) to name the ONNX model's outputs")
        classes = common.read_classmap(classmap)
        return common.manifest_for(common.model_arguments(mc), classes, common.input_shape(mc),
                                   common.preprocess_record(tc), common.interpolation(mc), spec_text="")

    def predictor(self, run, model_path):
        predictor = super().predictor(run, model_path)
        if is_onnx(model_path):
            static = predictor.input_shape
            wanted = tuple(predictor.manifest["input_shape"])
            if all(isinstance(d, int) for d in static) and static != wanted:
                raise TaoctlError(f"{model_path}: model input is {static} but the spec's input_image_size is {wanted}")
        classmap = run.flags.get("classmap")
        if classmap and not is_onnx(model_path):
            names = common.read_classmap(classmap)
            if names != common.classes_of(predictor.manifest):
                raise TaoctlError(f"classmap {classmap} ({names}) does not match the model's classes "
                                  f"{common.classes_of(predictor.manifest)}")
        return predictor

    def evaluator(self, run, manifest):
        ec = run.spec.eval_config
        data = run.flags.get("image_dir") or ec.eval_dataset_path
        if not data:
            raise TaoctlError("no data to evaluate: set eval_config.eval_dataset_path or pass -i")
        classes, shape = common.classes_of(manifest), tuple(manifest["input_shape"])
        index, arrays, labels = load_split(run, data, classes, shape, manifest.get("interpolation", "BILINEAR"),
                                           "center" if ec.enable_center_crop else "resize",
                                           "eval_config.eval_dataset_path")
        return ClassificationEvaluator(arrays, labels, classes, int(run.flags.get("batch_size") or ec.batch_size or 32),
                                       int(ec.top_k or 1), dataset=str(data))

    def infer(self, run, predictor):
        image, image_dir = run.flags.get("image"), run.flags.get("image_dir")
        paths = list_images(image, image_dir)
        rows, skipped = classify(predictor, paths, run.flag("batch_size", 1),
                                 bool(run.spec.eval_config.enable_center_crop))
        for path, why in skipped:
            print(f"Warning: skipped {why}", flush=True)
        if not rows:
            raise TaoctlError(f"none of the {len(paths)} image(s) could be read: {skipped[0][1]}")
        classes = common.classes_of(predictor.manifest)
        if image:
            _, probabilities = rows[0]
            best = int(probabilities.argmax())
            print(f"Current predictions: {probabilities[None]}", flush=True)
            print(f"Class label = {best}", flush=True)
            print(f"Class name = {classes[best]}", flush=True)
            return
        for path, probabilities in rows:
            best = int(probabilities.argmax())
            print(f"{path}: {classes[best]} ({probabilities[best]:.4f})", flush=True)
        # TAO writes result.csv into the image folder, or into -r when it is given.
        out = run.results_dir or Path(image_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_result_csv(out / "result.csv", rows, classes)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):  # a read-only image folder
                raise
            raise TaoctlError(f"cannot write {out / 'result.csv'}: {exc.strerror}; pass -r DIR to write it there") \
                from None
        print(f"Wrote {out / 'result.csv'} ({len(rows)} images, {len(skipped)} skipped)", flush=True)

    # ------------------------------------------------------------------ prune / export
    def sample_inputs(self, run, manifest, folder, count):
        paths = common.image_paths(folder, "--cal_image_dir" if folder == run.flags.get("cal_image_dir") else "data")
        if not paths:
            raise TaoctlError(f"--cal_image_dir {folder}: no images found")
        center = run.spec is None or bool(run.spec.eval_config.enable_center_crop)
        images, skipped = common.load_image_sample(paths, max(count, 1), tuple(manifest["input_shape"]),
                                                   manifest.get("interpolation", "BILINEAR"),
                                                   "center" if center else "resize", run.strict)
        if skipped:
            print(f"Warning: skipped {len(skipped)} unreadable images: " + "; ".join(skipped[:3]), flush=True)
        if not len(images):
            raise TaoctlError(f"{folder}: none of the images could be read")
        return images

    def default_sample_folder(self, run):
        if run.spec is None:
            return None
        candidates = (run.spec.train_config.val_dataset_path, run.spec.eval_config.eval_dataset_path,
                      run.spec.train_config.train_dataset_path)
        return next((folder for folder in candidates if folder and Path(folder).is_dir()
                     and common.image_paths(folder, "data")), None)

    def check_prune_flags(self, run):
        if run.flags.get("classifier_input_ratio") is not None and not run.flags.get("cal_image_dir"):
            raise TaoctlError("--classifier_input_ratio ranks features on images: pass --cal_image_dir too")

    def after_prune(self, run, model, manifest, report, calibration):
        from taoctl.engine.pruning import count_macs_params, prune_classifier_inputs
        from taoctl.engine.runners import pruned_sizes

        ratio = run.flags.get("classifier_input_ratio")
        if ratio is not None:  # after the refit: rank the features the pruned model computes
            head_layer = prune_classifier_inputs(model, model.head_names[0], calibration, ratio,
                                                 run.flags["pruning_granularity"], run.flags["min_num_filters"])
            if head_layer:
                report.layers.append(head_layer)
                report.macs_after, report.params_after = count_macs_params(model, tuple(manifest["input_shape"]))
                print(f"Pruned the classifier's inputs ({head_layer[0]}): {head_layer[1]} -> {head_layer[2]} "
                      f"channels; {pruned_sizes(report)}", flush=True)
        return {"classifier_input_ratio": ratio}

    def export_adapter(self, run, model, manifest):
        """A classifier as deployed: softmax probabilities, dynamic batch, a secondary nvinfer classifier."""
        classes = self._export_classes(run, manifest)
        return export.ExportAdapter(
            module=_Softmax(model), input_names=(INPUT,), output_names=(OUTPUT,),
            dynamic_axes={INPUT: {0: export.BATCH}}, int8_agreement=top1_agreement,
            deepstream=export.DeepStreamFields(export.NetworkType.CLASSIFIER, labels=tuple(classes),
                                               normalizer=common.normalizer_from_manifest(manifest).describe(),
                                               classifier_threshold=0.2, process_mode=2))

    def _export_classes(self, run, manifest):
        classes = common.classes_of(manifest)
        classmap = run.flags.get("classmap_json")
        if not classmap:
            return classes
        names = common.read_classmap(classmap)
        if len(names) != len(classes):
            raise TaoctlError(f"--classmap_json {classmap} has {len(names)} classes, the model {len(classes)}")
        return names

    def after_export(self, run, manifest, output):
        """classmap.json beside the ONNX (evaluate and inference of the .onnx read it), never overwriting another."""
        mapping = {name: i for i, name in enumerate(self._export_classes(run, manifest))}
        path = output.with_name("classmap.json")
        if path.exists() and json.loads(path.read_text() or "{}") != mapping:
            path = output.with_suffix(".classmap.json")
        common.write_json(path, mapping)

    def calibration_tensorfile(self, run):
        """max_batches x batch_size_per_gpu images of the training (or validation) set, as evaluation sees them."""
        spec = run.spec
        field = "val_dataset_path" if run.flags.get("use_validation_set") else "train_dataset_path"
        folder = getattr(spec.train_config, field)
        if not folder or not Path(folder).is_dir():
            raise TaoctlError(f"train_config.{field}: {folder or '(empty)'} is not a folder")
        paths = common.image_paths(folder, f"train_config.{field}")
        if not paths:
            raise TaoctlError(f"train_config.{field}: no images in {folder}")
        count = run.flags["max_batches"] * max(1, spec.train_config.batch_size_per_gpu or 1)
        mode = "center" if spec.eval_config.enable_center_crop else "resize"
        images, skipped = common.load_image_sample(paths, count, common.input_shape(spec.model_config),
                                                   common.interpolation(spec.model_config), mode, run.strict)
        for why in skipped:
            print(f"Warning: skipped {why}", flush=True)
        if not len(images):
            raise TaoctlError(f"train_config.{field}: none of the sampled images in {folder} could be read")
        return images


def list_images(image=None, image_dir=None) -> list[str]:
    if bool(image) == bool(image_dir):
        raise TaoctlError("pass exactly one of -i/--image and -d/--image_dir")
    if image:
        if not Path(image).is_file():
            raise TaoctlError(f"-i {image}: no such image file")
        return [str(image)]
    files = common.image_paths(image_dir, "-d")
    if not files:
        raise TaoctlError(f"-d {image_dir}: no images (extensions {', '.join(imagefolder.IMAGE_EXTENSIONS)})")
    return files


def classify(predictor, paths: list[str], batch_size: int, center_crop: bool):
    """(path, class probabilities) per image; unreadable files are reported and skipped."""
    shape, interp = tuple(predictor.manifest["input_shape"]), predictor.manifest.get("interpolation", "BILINEAR")
    mode = "center" if center_crop else "resize"
    rows, skipped = [], []
    for start in range(0, len(paths), batch_size):
        arrays, kept = [], []
        for path in paths[start:start + batch_size]:
            try:
                arrays.append(imagefolder.load_image(path, shape[1:], shape[0], mode, interp))
                kept.append(path)
            except TaoctlError as exc:
                skipped.append((path, str(exc)))
        if not arrays:
            continue
        probs = predictor(np.stack([a.transpose(2, 0, 1) for a in arrays]))[0]
        rows += zip(kept, np.asarray(probs, dtype=np.float32))
    return rows, skipped


def write_result_csv(path: Path, rows, classes: list[str]) -> None:
    """TAO's result.csv: no header, one ``path,class name,confidence`` line per image, the
    confidence as TAO's pandas writes a float32."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for image, probabilities in rows:
        best = int(probabilities.argmax())
        writer.writerow([image, classes[best], str(probabilities[best])])
    write_atomic(path, buffer.getvalue())


TASK = ClassificationTask()
