"""yolo_v3 (TAO's YOLOv3) on the engine's task contract.

What is yolo_v3's own: the spec mapping (``yolov3_config`` -> ``model.model_arguments``, anchors,
loss weights; ``augmentation_config`` -> input size and augmentation; ``nms_config``;
``eval_config``) and the network (``model``). The YOLO arithmetic (targets, TAO's loss, decoding,
NMS), the data, the AP evaluator and the inference writers are the engine's
(``engine.detection``), ready for yolo_v4. Training, evaluation, pruning, export and calibration
files are the engine's runners.

Inputs: RGB, normalised with ImageNet's mean and standard deviation (what the registry's
pretrained backbones expect); ``augmentation_config.image_mean`` (TAO's per-channel mean, keys
r/g/b) replaces that with mean subtraction alone, as TAO applies it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from taoctl.engine import distributed, export, optim
from taoctl.engine.detection import frames as det_frames
from taoctl.engine.detection import images as det_images
from taoctl.engine.detection import writers
from taoctl.engine.detection.anchors import parse_anchor_shape
from taoctl.engine.detection.evaluation import AP_MODES, DetectionEvaluator
from taoctl.engine.detection.nms import BatchedNMS
from taoctl.engine.detection.yolo import LossWeights, YoloDecode, YoloLoss
from taoctl.engine.device import cpu_threads
from taoctl.engine.metrics.detection import ImageTargets
from taoctl.engine.detection.task import TF1DetectionTask
from taoctl.engine.task import TrainData, Validation
from taoctl.engine.trainer import Hook
from taoctl.errors import TaoctlError
from taoctl.tasks.yolo_v3 import model as yolo_model

NAME = "yolo_v3"
INPUT, BOXES, SCORES = "Input", "boxes", "scores"
ANCHOR_FIELDS = ("small_anchor_shape", "mid_anchor_shape", "big_anchor_shape")  # stride 8, 16, 32
IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "bgr": False}
# nms_config fields a spec leaves at proto3's 0: TAO's sample specs' values.
DEFAULT_NMS_IOU, DEFAULT_TOP_K = 0.5, 200
DEFAULT_CONFIDENCE = 0.001  # export without -e: TAO's sample specs' confidence_threshold
# DeepStream's parser of TAO's BatchedNMS outputs: DeepStream ships it in its custom-parser library
# (TAO's deepstream_reference_apps yolo configs point there; deepstream_tao_apps' post_processor has it too).
DS_PARSER = "NvDsInferParseCustomBatchedNMSTLT"
DS_PARSER_LIB = "/opt/nvidia/deepstream/deepstream/lib/libnvds_infercustomparser.so"
INPUT_MULTIPLE = 32  # the coarsest head's stride


class EpochHook(Hook):
    """A fresh augmentation draw per epoch (the dataset's epoch, shared with its workers)."""

    main_only = False

    def __init__(self, dataset: det_images.DetectionTrainDataset):
        self.dataset = dataset

    def before_epoch(self, trainer, epoch):
        self.dataset.set_epoch(epoch)


def normalizer(augmentation_config) -> dict:
    """The input normalisation (0-255 scale): ImageNet's, or TAO's image_mean subtracted alone."""
    means = {str(k).lower(): float(v) for k, v in augmentation_config.image_mean.items()}
    if not means:
        return dict(IMAGENET)
    missing = [c for c in "rgb" if c not in means]
    if missing:
        raise TaoctlError(f"augmentation_config.image_mean: give r, g and b for an RGB input (missing "
                          f"{', '.join(missing)})")
    return {"mean": [means["r"], means["g"], means["b"]], "std": [1.0, 1.0, 1.0], "bgr": False}


def to_input(normalization: dict):
    mean = np.asarray(normalization["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(normalization["std"], np.float32).reshape(1, 3, 1, 1)

    def preprocess(images: np.ndarray) -> np.ndarray:
        """uint8 N x 3 x H x W -> the network's float input."""
        return (images.astype(np.float32) - mean) / std

    return preprocess


class YoloV3Task(TF1DetectionTask):
    name = NAME
    spec_module = "taoctl.tasks.yolo_v3.spec"

    # ------------------------------------------------------------------ spec
    def required_spec(self, subtask, flags):
        return "train" if subtask == "train" else None

    @staticmethod
    def input_size(spec) -> tuple[int, int]:
        aug = spec.augmentation_config
        width, height = int(aug.output_width), int(aug.output_height)
        for field, value in (("output_width", width), ("output_height", height)):
            if value <= 0 or value % INPUT_MULTIPLE:
                raise TaoctlError(f"augmentation_config.{field} is {value}; it must be a positive multiple of "
                                  f"{INPUT_MULTIPLE} (the coarsest head's stride)")
        if aug.output_channel not in (0, 3):
            raise TaoctlError(f"augmentation_config.output_channel: only 3 (RGB) is supported, "
                              f"got {aug.output_channel}")
        if aug.randomize_input_shape_period:
            raise TaoctlError("augmentation_config.randomize_input_shape_period: multi-scale training is not "
                              "supported by taoctl; set it to 0")
        return width, height

    @staticmethod
    def anchors(spec) -> list[np.ndarray]:
        config = spec.yolov3_config
        return [parse_anchor_shape(getattr(config, f), f"yolov3_config.{f}") for f in ANCHOR_FIELDS]

    @staticmethod
    def class_names(spec) -> list[str]:
        return det_frames.class_names(det_frames.class_mapping(spec.dataset_config.target_class_mapping))

    @staticmethod
    def nms_settings(spec) -> tuple[float, float, int]:
        config = spec.nms_config

        def value(number: float) -> float:  # the spec's float32 as written (0.05, not 0.050000001)
            return float(f"{number:.7g}")

        return (value(config.confidence_threshold), value(config.clustering_iou_threshold) or DEFAULT_NMS_IOU,
                int(config.top_k) or DEFAULT_TOP_K)

    def batched_nms(self, spec, width: int, height: int) -> BatchedNMS:
        """nms_config as the exported graph's tail: TAO's BatchedNMS outputs (boxes normalised by the input)."""
        confidence, iou, top_k = self.nms_settings(spec) if spec is not None else (DEFAULT_CONFIDENCE,
                                                                                  DEFAULT_NMS_IOU, DEFAULT_TOP_K)
        return BatchedNMS(BOXES, SCORES, (int(width), int(height)), confidence, iou, top_k)

    def postprocess(self, spec, width: int, height: int):
        """The deployed outputs (TAO's BatchedNMS set, from a model file, an ONNX or an engine) -> detections."""
        return self.batched_nms(spec, width, height).detections

    # ------------------------------------------------------------------ model
    def model_from_manifest(self, manifest):
        return yolo_model.build(manifest["model"], len(manifest["classes"]))

    def manifest(self, run, data, spec_text):
        return {"task": NAME, "model": data.arguments, "classes": data.classes,
                "input_shape": [3, data.height, data.width], "normalizer": data.normalizer, "spec": spec_text}

    def preprocess(self, manifest):
        return to_input(manifest["normalizer"])

    def model_name(self, run):
        """TAO's checkpoint names: yolov3_resnet18_epoch_080.tlt."""
        config = run.spec.yolov3_config
        return f"yolov3_{config.arch}{int(config.nlayers) or ''}_epoch"

    def build_model(self, run, data):
        from taoctl.engine.pretrained import load_pretrained

        config, training = run.spec.yolov3_config, run.spec.training_config
        freeze_blocks = [int(b) for b in config.freeze_blocks]
        model = yolo_model.build(data.arguments, len(data.classes), freeze_blocks, bool(config.freeze_bn))
        which = training.WhichOneof("load_model")
        if which:
            source = getattr(training, which)
            own = self.own_manifest(source, run.key)
            if which == "pruned_model_path" and (own is None or not own.get("pruning")):
                raise TaoctlError(f"training_config.pruned_model_path {source} is not a pruned yolo_v3 model file "
                                  f"(write one with `taoctl yolo_v3 prune`)")
            if own is not None and own["classes"] != data.classes:
                raise TaoctlError(f"training_config.{which} {source} detects {own['classes']}, the spec's classes "
                                  f"are {data.classes}")
            # A yolo_v3 file (pruned or not) loads whole, its layer widths applied; any other weights
            # file (ImageNet, a classification model) loads onto the backbone, whose names it shares.
            load_pretrained(model if own is not None else model.backbone, source, key=run.key, log=run.echo)
            model.backbone.freeze_blocks(freeze_blocks)
            model.backbone.set_freeze_bn(bool(config.freeze_bn))
        return model

    # ------------------------------------------------------------------ training
    def train_data(self, run):
        spec = run.spec
        seed = self.seed(run)
        width, height = self.input_size(spec)
        anchors = self.anchors(spec)
        loaded = det_frames.load_frames(spec.dataset_config, strict=run.strict, echo=run.echo)
        classes = loaded.class_names
        aug = spec.augmentation_config
        augmentation = det_images.YoloAugmentation(hue=aug.hue, saturation=aug.saturation, exposure=aug.exposure,
                                                   vertical_flip=aug.vertical_flip,
                                                   horizontal_flip=aug.horizontal_flip, jitter=aug.jitter)
        dataset = det_images.DetectionTrainDataset(loaded.train, classes, width, height, augmentation,
                                                   seed + run.dist.rank)
        batch_size = int(spec.training_config.batch_size_per_gpu) or 8
        sampler = distributed.distributed_sampler(dataset, shuffle=True, seed=seed)
        workers = min(int(spec.training_config.n_workers) or 2, max(cpu_threads() // 2, 0))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                             num_workers=workers, collate_fn=det_images.collate,
                                             generator=torch.Generator().manual_seed(seed),
                                             persistent_workers=workers > 0)
        config = spec.yolov3_config
        weights = LossWeights.from_config(config.loss_loc_weight, config.loss_neg_obj_weights,
                                          config.loss_class_weights, config.matching_neutral_box_iou)
        loss = YoloLoss(YoloDecode(anchors, yolo_model.STRIDES, len(classes)), weights, (width, height))
        run.echo(f"Classes ({len(classes)}): {', '.join(classes)}; train images {len(loaded.train)}, "
                 f"validation images {len(loaded.val)}, input {width}x{height}")
        return TrainData(loader, classes=classes, width=width, height=height, dataset=dataset, val_frames=loaded.val,
                         arguments=yolo_model.model_arguments(config, width, height, anchors), loss=loss,
                         normalizer=normalizer(aug), batch_size=batch_size)

    def optimization(self, run, steps_per_epoch):
        return optim.from_cv_common(run.spec.training_config, steps_per_epoch)

    def training_step(self, run, model, data):
        loss_fn = data.loss.to(run.device)
        mean = torch.tensor(data.normalizer["mean"], device=run.device).view(1, 3, 1, 1)
        std = torch.tensor(data.normalizer["std"], device=run.device).view(1, 3, 1, 1)

        def step(net, batch):
            images, boxes, classes = batch
            raws = net((images.to(run.device).float() - mean) / std)
            return loss_fn(raws, boxes, classes)

        return step

    def quantization_aware(self, run):
        return bool(run.spec.training_config.enable_qat)

    def train_hooks(self, run, data):
        return [EpochHook(data.dataset)]

    def validation(self, run, data):
        if not data.val_frames:
            run.echo("No validation images (dataset_config.validation_fold / validation_data_sources): "
                     "training runs without validation.")
            return None
        evaluator = self._evaluator(run.spec, data.val_frames, data.classes, data.width, data.height,
                                    max(data.batch_size, 8), "the validation set")
        # TAO's YOLO validates every checkpoint_interval epochs.
        return Validation(evaluator, period=self.checkpoint_interval(run), first_epoch=1, best_metric="mAP")

    def after_training(self, run, trainer):
        if trainer.history:
            last = trainer.history[-1]
            mean_ap = last.get("val_mAP")
            validated = f" validation mAP {mean_ap * 100:.2f} %" if mean_ap is not None else ""
            run.echo(f"Final: epoch {last['epoch']}{validated}; model {trainer.weights_path(trainer.last_epoch)}")

    # ------------------------------------------------------------------ evaluate / inference
    def _evaluator(self, spec, frames, classes, width, height, batch_size, dataset):
        images, boxes, labels = det_images.load_samples(frames, classes, width, height)
        truth = [ImageTargets(b.astype(np.float64), c) for b, c in zip(boxes, labels)]
        config = spec.eval_config
        return DetectionEvaluator(images, truth, classes, self.postprocess(spec, width, height),
                                  batch_size=batch_size, iou_threshold=float(config.matching_iou_threshold) or 0.5,
                                  ap_mode=AP_MODES[config.average_precision_mode], dataset=dataset,
                                  pr_curve=bool(config.visualize_pr_curve))

    def onnx_manifest(self, run, onnx_path):
        width, height = self.input_size(run.spec)
        return {"task": NAME, "classes": self.class_names(run.spec), "input_shape": [3, height, width],
                "normalizer": normalizer(run.spec.augmentation_config)}

    def evaluator(self, run, manifest):
        spec = run.spec
        classes = list(manifest["classes"])
        _, height, width = manifest["input_shape"]
        if run.flags.get("image_dir"):
            if not run.flags.get("label_dir"):
                raise TaoctlError("-i/--image_dir needs -l/--label_dir (KITTI labels of those images)")
            mapping = (det_frames.class_mapping(spec.dataset_config.target_class_mapping)
                       if spec.dataset_config.target_class_mapping else {c: c for c in classes})
            frames = det_frames.kitti_folder_frames(run.flags["image_dir"], run.flags["label_dir"], mapping)
            where = run.flags["image_dir"]
        else:
            frames = det_frames.load_frames(spec.dataset_config, strict=run.strict, echo=lambda _: None).val
            where = "the validation set"
            if not frames:
                raise TaoctlError("the spec's validation set is empty (dataset_config.validation_data_sources or "
                                  "validation_fold): pass -i and -l to evaluate a KITTI folder")
        batch = int(run.flags.get("batch_size") or spec.eval_config.batch_size or 8)
        return self._evaluator(spec, frames, classes, width, height, batch, where)

    def infer(self, run, predictor):
        classes = list(predictor.manifest["classes"])
        _, height, width = predictor.manifest["input_shape"]
        threshold = float(run.flags["threshold"])
        postprocess = self.postprocess(run.spec, width, height)
        paths = det_images.image_files(run.flags["image_dir"])
        batch = int(run.flags.get("batch_size") or 1)
        out = Path(run.flags["results_dir"])
        boxes_written = 0
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            images, sizes = det_images.load_images(chunk, width, height)
            for path, size, found in zip(chunk, sizes, postprocess(predictor(images))):
                kept = found.scores >= threshold
                found = type(found)(found.boxes[kept], found.classes[kept], found.scores[kept])
                writers.write_detections(out, path, size, (width, height), found, classes)
                boxes_written += int(kept.sum())
        print(f"Wrote {boxes_written} detections (confidence >= {threshold:g}) of {len(paths)} images to "
              f"{out / 'images_annotated'} and {out / 'labels'}", flush=True)

    # ------------------------------------------------------------------ prune / export
    def sample_inputs(self, run, manifest, folder, count):
        paths = det_images.image_files(folder)
        chosen = [paths[i] for i in sorted(np.random.default_rng(0).permutation(len(paths))[:max(count, 1)])]
        _, height, width = manifest["input_shape"]
        return det_images.load_images(chosen, width, height)[0]

    def default_sample_folder(self, run):
        """The folder of the spec's first training image."""
        if run.spec is None or not run.spec.dataset_config.data_sources:
            return None
        train = det_frames.load_frames(run.spec.dataset_config, echo=lambda _: None).train
        return str(Path(train[0].image_path).parent)

    def calibration_tensorfile(self, run):
        spec = run.spec
        loaded = det_frames.load_frames(spec.dataset_config, strict=run.strict, echo=run.echo)
        frames = loaded.val if run.flags.get("use_validation_set") else loaded.train
        if not frames:
            raise TaoctlError("the spec's validation set is empty")
        count = run.flags["max_batches"] * max(1, int(spec.training_config.batch_size_per_gpu) or 1)
        chosen = [frames[i] for i in sorted(np.random.default_rng(0).permutation(len(frames))[:count])]
        width, height = self.input_size(spec)
        return det_images.load_samples(chosen, loaded.class_names, width, height)[0]

    def export_adapter(self, run, model, manifest):
        """The network and its decoding (``boxes``, ``scores``), then TAO's BatchedNMS outputs appended to the
        graph (``engine.detection.nms.BatchedNMS``: ONNX NonMaxSuppression, EfficientNMS_TRT in an engine)."""
        classes = list(manifest["classes"])
        _, height, width = manifest["input_shape"]
        tail = self.batched_nms(run.spec, width, height)
        # TAO's deepstream_tao_apps yolo configs: the BatchedNMS parser, cluster-mode=3, pre-cluster-threshold.
        attributes = {"all": export.ClassAttributes(pre_cluster_threshold=tail.confidence_threshold)}
        deepstream = export.DeepStreamFields(
            export.NetworkType.DETECTOR, labels=tuple(classes), normalizer=manifest["normalizer"],
            cluster_mode=export.ClusterMode.DBSCAN_NMS_HYBRID, class_attributes=attributes,
            parse_bbox_func_name=DS_PARSER, custom_lib_path=DS_PARSER_LIB,
            notes=(f"{DS_PARSER} is in DeepStream's {DS_PARSER_LIB.rpartition('/')[2]}, and in deepstream_tao_apps'",
                   "post_processor/libnvds_infercustomparser_tao.so: point custom-lib-path at either."))
        # Boxes are in input pixels (hundreds): 1e-2 is float32's rounding after exp, not a disagreement.
        return export.ExportAdapter(module=yolo_model.Deployed(model), input_names=(INPUT,),
                                    output_names=(BOXES, SCORES), dynamic_axes={INPUT: {0: export.BATCH}},
                                    tolerances={BOXES: 1e-2, SCORES: 1e-3}, deepstream=deepstream, tail=tail)


TASK = YoloV3Task()
