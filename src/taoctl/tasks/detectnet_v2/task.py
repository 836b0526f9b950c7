"""detectnet_v2 (TAO's DetectNet_v2) on the engine's task contract.

What is detectnet_v2's own: its spec mapping (``model.model_arguments``), the network
(``model``), data and augmentation (``data``), coverage/box targets (``targets``), the cost
function (``loss``), clustering (``postprocess``), the evaluator (``evaluation``), the inference
writers (``inference``) and the export adapter below (TAO's output names, DeepStream network-type
0 with the clustering mapped onto nvinfer's). Training, evaluation, pruning, export and
calibration files are the engine's runners.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from taoctl.engine import distributed, export, optim
from taoctl.engine.device import cpu_threads
from taoctl.engine.detection import images as det_images
from taoctl.engine.metrics.detection import ImageTargets
from taoctl.engine.detection.task import TF1DetectionTask
from taoctl.engine.task import TrainData, Validation
from taoctl.engine.trainer import Hook
from taoctl.errors import TaoctlError
from taoctl.tasks.detectnet_v2 import data as dn_data
from taoctl.tasks.detectnet_v2 import evaluation, inference, model as dn_model, postprocess, targets
from taoctl.tasks.detectnet_v2.encoding import STRIDE
from taoctl.tasks.detectnet_v2.loss import DetectNetLoss

NAME = "detectnet_v2"
INPUT, COV, BBOX = "input_1", "output_cov/Sigmoid", "output_bbox/BiasAdd"
# TAO's DetectNet_v2 feeds pixels scaled to 0..1 (DeepStream: net-scale-factor 1/255, no offsets).
NORMALIZER = {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0], "bgr": False}
_CLUSTER_MODES = {"DBSCAN": export.ClusterMode.DBSCAN, "NMS": export.ClusterMode.NMS,
                  "HYBRID": export.ClusterMode.DBSCAN_NMS_HYBRID}


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 N x 3 x H x W -> the network's float input."""
    return images.astype(np.float32) / 255.0


class EpochHook(Hook):
    """Per epoch: a fresh augmentation draw (the dataset's epoch, shared with its workers), and the cost
    function's objective weights, moved from initial_weight to weight_target over training or
    (enable_autoweighting) re-balanced from each epoch's costs."""

    main_only = False

    def __init__(self, dataset: dn_data.DetectNetTrainDataset, loss: DetectNetLoss):
        self.dataset, self.loss = dataset, loss

    def before_epoch(self, trainer, epoch):
        self.dataset.set_epoch(epoch)
        self.loss.set_progress((epoch - 1) / max(trainer.max_epochs - 1, 1))

    def after_epoch(self, trainer, epoch, logs):
        self.loss.end_epoch()


class DetectNetTask(TF1DetectionTask):
    name = NAME
    spec_module = "taoctl.tasks.detectnet_v2.spec"

    # ------------------------------------------------------------------ spec
    def spec_kind_for(self, run):
        """inference takes TAO's inference spec (inferencer_config + bbox_handler_config) or the experiment spec."""
        if run.subtask == "inference" and run.spec_path:
            from taoctl.engine.spec import read_text

            if "inferencer_config" in read_text(run.spec_path):
                return "inference"
        return "experiment"

    def required_spec(self, subtask, flags):
        return "train" if subtask == "train" else None

    def dry_run_paths(self, run):
        paths = super().dry_run_paths(run)
        if run.subtask == "inference" and not run.flags.get("model_path"):
            paths["model"] = self.default_model_path(run)
        return paths

    @staticmethod
    def _is_inference_spec(run) -> bool:
        return run.spec is not None and "inferencer_config" in run.spec.DESCRIPTOR.fields_by_name

    class_names = staticmethod(dn_data.target_classes)

    @staticmethod
    def output_size(spec) -> tuple[int, int]:
        pre = spec.augmentation_config.preprocessing
        width, height = int(pre.output_image_width), int(pre.output_image_height)
        if width <= 0 or height <= 0:
            raise TaoctlError("augmentation_config.preprocessing: output_image_width and output_image_height "
                              "are required")
        if pre.output_image_channel not in (0, 3):
            raise TaoctlError(f"augmentation_config.preprocessing.output_image_channel: only 3 (RGB) is supported, "
                              f"got {pre.output_image_channel}")
        return width, height

    # ------------------------------------------------------------------ model
    def model_from_manifest(self, manifest):
        return dn_model.build(manifest["model"], len(manifest["classes"]))

    def manifest(self, run, data, spec_text):
        return {"task": NAME, "model": data.arguments, "classes": data.classes,
                "input_shape": [3, data.height, data.width], "spec": spec_text}

    def model_name(self, run):
        # TAO names DetectNet_v2 checkpoints model.step-N.tlt after -n (default "model").
        return run.flags.get("model_name") or "model"

    def preprocess(self, manifest):
        return to_input

    def build_model(self, run, data):
        from taoctl.engine.pretrained import load_pretrained

        mc = run.spec.model_config
        model = dn_model.build(data.arguments, len(data.classes), list(mc.freeze_blocks), bool(mc.freeze_bn))
        source = mc.pretrained_model_file
        if source:
            own = self.own_manifest(source, run.key)
            if own is not None and own.get("pruning") and not mc.load_graph:
                raise TaoctlError(f"model_config.pretrained_model_file {source} is a pruned model: set "
                                  f"model_config.load_graph: true to retrain it with its pruned layer widths")
            # A DetectNet_v2 file (retraining, pruned or not) loads whole, heads included; a classifier's
            # or ImageNet checkpoint loads onto the backbone, whose module names it shares.
            target = model if own is not None else model.backbone
            report = load_pretrained(target, source, key=run.key, log=run.echo)
            if mc.freeze_pretrained_layers:
                loaded = set(report.loaded)
                for name, param in target.named_parameters():
                    if name in loaded:
                        param.requires_grad_(False)
            model.backbone.freeze_blocks(list(mc.freeze_blocks))
            model.backbone.set_freeze_bn(bool(mc.freeze_bn))
        return model

    # ------------------------------------------------------------------ training
    def train_data(self, run):
        spec = run.spec
        seed = self.seed(run)
        loaded = dn_data.load_data(spec, seed=seed, strict=run.strict, echo=run.echo)
        width, height = loaded.width, loaded.height
        classes = self.class_names(spec)
        if loaded.class_names != classes:
            raise TaoctlError(f"dataset classes {loaded.class_names} differ from cost_function_config.target_classes "
                              f"{classes}")
        arguments = dn_model.model_arguments(spec.model_config, width, height)
        dataset = dn_data.DetectNetTrainDataset(loaded.train_frames, classes, width, height,
                                                spec.augmentation_config, seed + run.dist.rank)
        batch_size = int(spec.training_config.batch_size_per_gpu) or 4
        sampler = distributed.distributed_sampler(dataset, shuffle=True, seed=seed)
        workers = min(2, max(cpu_threads() // 2, 0))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                             num_workers=workers, collate_fn=dn_data.collate,
                                             generator=torch.Generator().manual_seed(seed),
                                             persistent_workers=workers > 0)
        raster, deadzone = targets.rasterizer_configs(spec, classes)
        loss = DetectNetLoss(spec.cost_function_config, classes)
        run.echo(f"Classes ({len(classes)}): {', '.join(classes)}; train images {len(loaded.train_frames)}, "
                 f"validation images {len(loaded.val_frames)}, input {width}x{height}")
        return TrainData(loader, classes=classes, width=width, height=height, arguments=arguments, dataset=dataset,
                         val_frames=loaded.val_frames, raster=raster, deadzone=deadzone, loss=loss,
                         batch_size=batch_size)

    def optimization(self, run, steps_per_epoch):
        return optim.from_cv_common(run.spec.training_config, steps_per_epoch)

    def training_step(self, run, model, data):
        grid_h, grid_w = data.height // STRIDE, data.width // STRIDE
        loss_fn = data.loss.to(run.device)

        def step(net, batch):
            images, boxes, classes = batch
            cov, bbox = net(images.float() / 255.0)
            wanted = targets.rasterize(boxes, classes, len(data.classes), grid_h, grid_w, data.raster, data.deadzone)
            wanted = {k: v.to(cov.device) for k, v in wanted.items()}
            return loss_fn(cov, bbox, wanted, from_logits=True)

        return step

    def quantization_aware(self, run):
        return bool(run.spec.training_config.enable_qat)

    def train_hooks(self, run, data):
        return [EpochHook(data.dataset, data.loss)]

    def validation(self, run, data):
        if not data.val_frames:
            run.echo("No validation images (dataset_config.validation_fold / validation_data_source): "
                     "training runs without validation.")
            return None
        ec = run.spec.evaluation_config
        # Its own cost function, in eval mode: validation costs must not enter autoweighting's epoch sums.
        cost = DetectNetLoss(run.spec.cost_function_config, data.classes).eval()
        evaluator = self._evaluator(run, data.val_frames, data.classes, data.width, data.height,
                                    max(data.batch_size, 8), "validation", loss=cost, raster=data.raster,
                                    deadzone=data.deadzone)
        return Validation(evaluator, period=int(ec.validation_period_during_training) or 1,
                          first_epoch=int(ec.first_validation_epoch) or 1, best_metric="mAP")

    def after_training(self, run, trainer):
        if trainer.history:
            last = trainer.history[-1]
            mean_ap = last.get("val_mAP")
            run.echo(f"Final: epoch {last['epoch']}" + (f" validation mAP {mean_ap * 100:.2f} %" if mean_ap is not None
                                                         else "") + f"; model {trainer.weights_path(trainer.last_epoch)}")

    # ------------------------------------------------------------------ evaluate / inference
    def _evaluator(self, run, frames, classes, width, height, batch_size, dataset, loss=None, raster=None,
                   deadzone=0.0):
        spec = run.spec
        images, boxes, labels = dn_data.load_eval_samples(frames, classes, width, height,
                                                          spec.augmentation_config.preprocessing)
        truth = [ImageTargets(b.astype(np.float64), c) for b, c in zip(boxes, labels)]
        settings = evaluation.evaluation_settings(spec.evaluation_config, classes)
        params = postprocess.params_from_postprocessing(spec.postprocessing_config, classes)
        cost = None
        if loss is not None:
            grid_h, grid_w = height // STRIDE, width // STRIDE

            def cost(outputs, rows):
                wanted = targets.rasterize([torch.from_numpy(b).float() for b in boxes[rows]],
                                           [torch.from_numpy(c).long() for c in labels[rows]],
                                           len(classes), grid_h, grid_w, raster, deadzone)
                with torch.no_grad():
                    value, _ = loss(torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]), wanted)
                return float(value) * len(boxes[rows])

        return evaluation.DetectNetEvaluator(images, truth, classes, params, batch_size=batch_size, cost=cost,
                                             dataset=dataset, **settings)

    def default_model_path(self, run):
        """inference's model may come from the inference spec (inferencer_config.tlt_config.model), as in TAO."""
        if run.subtask == "inference" and self._is_inference_spec(run):
            return run.spec.inferencer_config.tlt_config.model or None
        return None

    def model_path_hint(self, run):
        return " or set inferencer_config.tlt_config.model" if run.subtask == "inference" else ""

    def onnx_manifest(self, run, onnx_path):
        width, height = self.output_size(run.spec)
        return {"task": NAME, "classes": self.class_names(run.spec), "input_shape": [3, height, width]}

    def evaluator(self, run, manifest):
        spec = run.spec
        classes = list(manifest["classes"])
        _, height, width = manifest["input_shape"]
        if run.flags.get("image_dir"):
            label_dir = run.flags.get("label_dir")
            if not label_dir:
                raise TaoctlError("-i/--image_dir needs -l/--label_dir (KITTI labels of those images)")
            frames = dn_data.kitti_frames(run.flags["image_dir"], label_dir, spec, classes)
            where = run.flags["image_dir"]
        else:
            loaded = dn_data.load_data(spec, seed=self.seed(run), strict=run.strict, echo=lambda _: None)
            frames = loaded.train_frames if run.flags.get("use_training_set") else loaded.val_frames
            where = "training set" if run.flags.get("use_training_set") else "validation set"
            if not frames:
                raise TaoctlError(f"the spec's {where} is empty: set dataset_config.validation_fold or "
                                  f"validation_data_source, or pass --use_training_set")
        batch = int(run.flags.get("batch_size") or spec.training_config.batch_size_per_gpu or 8)
        raster, deadzone = targets.rasterizer_configs(spec, classes)
        loss = DetectNetLoss(spec.cost_function_config, classes).eval() if spec.cost_function_config.target_classes else None
        return self._evaluator(run, frames, classes, width, height, batch, where, loss=loss, raster=raster,
                               deadzone=deadzone)

    def predictor(self, run, model_path):
        framework = run.flags.get("framework")
        if framework == "tensorrt":
            raise TaoctlError("-f tensorrt: evaluate a TensorRT engine with `taoctl deploy detectnet_v2 evaluate`; "
                              "here pass the model file or its exported .onnx")
        return super().predictor(run, model_path)

    def infer(self, run, predictor):
        spec = run.spec
        classes = list(predictor.manifest["classes"])
        if self._is_inference_spec(run):
            handler = spec.bbox_handler_config
            params = postprocess.params_from_bbox_handler(handler, classes)
            options = inference.overlay_options(handler, classes)
        else:
            params = postprocess.params_from_postprocessing(spec.postprocessing_config, classes)
            options = inference.overlay_options(None, classes)
        paths = det_images.image_files(run.flags["image_dir"])
        _, height, width = predictor.manifest["input_shape"]
        batch = int(run.flags.get("batch_size") or 1)
        out = Path(run.flags["results_dir"])
        written = 0
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            images, sizes = det_images.load_images(chunk, width, height)
            cov, bbox = predictor(images)
            for path, size, image_detections in zip(chunk, sizes,
                                                    postprocess.cluster_batch(cov, bbox, params, (width, height))):
                inference.write_results(out, path, size, (width, height), image_detections, classes, options)
                written += 1
        print(f"Wrote detections of {written} images to {out}", flush=True)

    # ------------------------------------------------------------------ prune / export
    def sample_inputs(self, run, manifest, folder, count):
        paths = det_images.image_files(folder)
        chosen = [paths[i] for i in sorted(np.random.default_rng(0).permutation(len(paths))[:max(count, 1)])]
        _, height, width = manifest["input_shape"]
        return det_images.load_images(chosen, width, height)[0]

    def default_sample_folder(self, run):
        """The folder of the spec's training images (TFRecords name them under image_directory_path)."""
        if run.spec is None or self._is_inference_spec(run) or not run.spec.dataset_config.data_sources:
            return None
        frames = dn_data.load_data(run.spec, seed=self.seed(run), echo=lambda _: None).train_frames
        return str(Path(frames[0].image_path).parent) if frames else None

    def calibration_tensorfile(self, run):
        spec = run.spec
        loaded = dn_data.load_data(spec, seed=self.seed(run), strict=run.strict, echo=run.echo)
        frames = loaded.val_frames if run.flags.get("use_validation_set") else loaded.train_frames
        if not frames:
            raise TaoctlError("the spec's " + ("validation" if run.flags.get("use_validation_set") else "training")
                              + " set is empty")
        count = run.flags["max_batches"] * max(1, int(spec.training_config.batch_size_per_gpu) or 1)
        chosen = [frames[i] for i in sorted(np.random.default_rng(0).permutation(len(frames))[:count])]
        return dn_data.load_eval_samples(chosen, loaded.class_names, loaded.width, loaded.height)[0]

    def export_adapter(self, run, model, manifest):
        classes = list(manifest["classes"])
        spec = run.spec if run.spec is not None and not self._is_inference_spec(run) else None
        return export.ExportAdapter(
            module=dn_model.Deployed(model), input_names=(INPUT,), output_names=(COV, BBOX),
            dynamic_axes={INPUT: {0: export.BATCH}}, tolerances={COV: 1e-3, BBOX: 1e-2},
            deepstream=self._deepstream(spec, classes))

    def _deepstream(self, spec, classes) -> export.DeepStreamFields:
        """network-type 0 with the spec's clustering as nvinfer's cluster-mode and per-class attributes."""
        attributes, mode = {}, export.ClusterMode.NMS
        if spec is not None and spec.postprocessing_config.target_class_config:
            params = postprocess.params_from_postprocessing(spec.postprocessing_config, classes)
            mode = _CLUSTER_MODES[params[0].algorithm]
            for index, p in enumerate(params):
                attributes[index] = export.ClassAttributes(
                    pre_cluster_threshold=p.coverage_threshold,
                    post_cluster_threshold=p.confidence_threshold or None,
                    eps=p.dbscan_eps if mode != export.ClusterMode.NMS else None,
                    min_boxes=p.dbscan_min_samples if mode != export.ClusterMode.NMS else None,
                    dbscan_min_score=p.dbscan_confidence_threshold if mode != export.ClusterMode.NMS else None,
                    nms_iou_threshold=p.nms_iou_threshold if mode != export.ClusterMode.DBSCAN else None,
                    topk=20 if mode != export.ClusterMode.DBSCAN else None)
        return export.DeepStreamFields(export.NetworkType.DETECTOR, labels=tuple(classes), normalizer=NORMALIZER,
                                       cluster_mode=mode, class_attributes=attributes)


TASK = DetectNetTask()
