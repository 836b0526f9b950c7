"""Every subtask's flags, declared once (click, no torch at import).

TAO declares one export app and one prune app for all its TF1 networks, and its entrypoint adds
the same device/logging flags to every subtask; so does taoctl. A task's subtask module is a
thin declaration:

    command = subtask_command("export", "taoctl.tasks.classification.task:TASK", __doc__,
                              options=[click.option("--classmap_json", ...)])

``options`` are the flags that are the task's own (classification's ``-cm``); the runner
(``engine/runners.py``, imported only when the command runs, so ``--help`` stays fast) gets
every flag by name in ``Run.flags``. Trailing ``key=value`` arguments are spec overrides.
"""

from __future__ import annotations

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, MultiValueOption, common_options, key_option, option_names, spec_option


def _spec(required: bool):
    return spec_option(required=required, names=("-e", "--experiment_spec_file", "--experiment_spec",
                                                  "--experiment_spec_path"))


def _results_dir(required: bool = False, short: bool = True):
    names = ("-r", "--results_dir") if short else ("--results_dir",)
    return click.option(*names, required=required, type=click.Path(file_okay=False),
                        help="Folder for outputs, logs and status.json.")


_STRICT = click.option("--strict", is_flag=True, help="Fail on unreadable inputs instead of skipping them.")

TRAIN = [
    _spec(True), _results_dir(required=True), key_option(),
    click.option("--init_epoch", type=int, default=1, show_default=True, help="Epoch to start from (resume)."),
    _STRICT,
    click.option("--force", is_flag=True, help="Start over in a results dir that holds a run of another spec."),
]

EVALUATE = [
    _spec(True),
    click.option("-m", "--model_path", default=None, help="Model (model file or exported .onnx)."),
    key_option(), _results_dir(),
    click.option("-b", "--batch_size", type=int, default=None, help="Batch size (default: the spec's)."),
    _STRICT,
]

INFERENCE = [
    click.option("-m", "--model_path", required=True, help="Model (model file or exported .onnx)."),
    key_option(), _spec(True),
    click.option("-b", "--batch_size", type=int, default=1, show_default=True),
    _results_dir(),
]

# TAO's prune app (the same for every TF1 network), plus taoctl's extensions.
PRUNE = [
    click.option("-m", "--model", "model_path", required=True, help="Trained model file."),
    click.option("-o", "--output_file", required=True, help="Pruned model file to write."),
    _spec(False), key_option(),
    click.option("-n", "--normalizer", type=click.Choice(["max", "L2"]), default="max", show_default=True,
                 help="Normalise each layer's filter norms by their max or by their L2 norm."),
    click.option("-eq", "--equalization_criterion", default="union", show_default=True,
                 type=click.Choice(["union", "intersection", "arithmetic_mean", "geometric_mean"]),
                 help="How layers tied by element-wise ops combine their scores."),
    click.option("-pg", "--pruning_granularity", type=int, default=8, show_default=True,
                 help="Kept channels are a multiple of this."),
    click.option("-pth", "--pruning_threshold", type=float, default=0.1, show_default=True,
                 help="Filters whose normalised norm is at or below this are removed."),
    click.option("-nf", "--min_num_filters", type=int, default=16, show_default=True,
                 help="Minimum filters per layer."),
    click.option("-el", "--excluded_layers", cls=MultiValueOption, default=(),
                 help="Layers (or module prefixes such as features.1) never pruned."),
    click.option("--criterion", type=click.Choice(["L2", "L2_bn"]), default="L2", show_default=True,
                 help="Filter importance: L2 = the kernel's L2 norm (TAO); L2_bn = the norm after folding the "
                      "following BatchNorm's scale in, what the deployed layer computes (taoctl extension)."),
    click.option("--cal_image_dir", default=None,
                 help="Images (searched recursively) on which every layer fed by pruned channels is refit by "
                      "least squares to reproduce the unpruned model's outputs (taoctl extension)."),
    click.option("--cal_images", type=int, default=256, show_default=True,
                 help="At most this many --cal_image_dir images are used."),
    _results_dir(short=False),
]

# TAO's export app (nvidia_tao_tf1/cv/common/export/app.py), the same for every network: every flag it has,
# those without a meaning here accepted with a notice (engine/runners.py run_export).
EXPORT = [
    click.option("-m", "--model", "model_path", required=True, help="Trained model file."),
    click.option("-o", "--output_file", default=None,
                 help="Output .onnx (default: the model's name with .onnx); a TAO 4 .etlt name gets plain ONNX."),
    key_option(), _spec(False),
    click.option("--data_type", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True),
    click.option("--target_opset", type=int, default=None,
                 help="ONNX opset (default 13: the TensorRT of every DeepStream 6.x/7.x parses it; 18 and newer "
                      "come from torch's dynamo exporter)."),
    click.option("--static_batch_size", type=int, default=-1, show_default=True,
                 help="A fixed batch dimension in the ONNX (-1: dynamic); INT8 then calibrates in batches of it."),
    click.option("--cal_image_dir", default=None, help="Images to calibrate INT8 on (searched recursively)."),
    click.option("--cal_data_file", default=None,
                 help="Calibration inputs (.npy): read when it exists and no --cal_image_dir is given, else written."),
    click.option("--cal_cache_file", default=None, help="TensorRT calibration cache (default <output>.cal.bin)."),
    click.option("--cal_json_file", default=None,
                 help="TAO's QAT scales file; taoctl writes QAT scales into the ONNX and --cal_cache_file, so it is not used (one notice)."),
    click.option("--force_ptq", is_flag=True,
                 help="INT8 of a QAT model from calibration (post-training quantisation) instead of its learned scales."),
    click.option("--batches", type=int, default=10, show_default=True, help="Calibration batches."),
    click.option("--batch_size", type=int, default=8, show_default=True, help="Calibration batch size."),
    click.option("--cal_method", type=click.Choice(["minmax", "entropy", "percentile"]), default="percentile",
                 show_default=True, help="INT8 calibration method (named in the calibration cache's header); "
                                         "percentile clips at 99.999 %. On BCCD detectnet_v2 each method has kept 95.5-102.5 % of "
                                         "fp32's mAP depending on the model: calibrate on enough images (--batches)."),
    click.option("--engine_file", default=None, help="Build a TensorRT engine here (needs tensorrt)."),
    click.option("--max_batch_size", type=int, default=16, show_default=True,
                 help="TensorRT profile's largest batch, and DeepStream's batch-size."),
    click.option("--min_batch_size", type=int, default=None, help="TensorRT profile's smallest batch (default 1)."),
    click.option("--opt_batch_size", type=int, default=None,
                 help="TensorRT profile's optimal batch (default: half of --max_batch_size)."),
    click.option("--max_workspace_size", type=int, default=None,
                 help="TensorRT builder's workspace in bytes, as TAO's (default: TensorRT's)."),
    click.option("-s", "--strict_type_constraints", is_flag=True,
                 help="TensorRT layers keep the precision asked for (OBEY_PRECISION_CONSTRAINTS)."),
    click.option("--onnx_route", type=click.Choice(["keras2onnx", "tf2onnx"]), default=None,
                 help="TAO's Keras-to-ONNX converter; accepted with a notice (taoctl exports with torch.onnx)."),
    click.option("--gen_ds_config", is_flag=True, help="Write DeepStream nvinfer_config.txt and labels.txt."),
    _results_dir(short=False),
    _STRICT,
]

CALIBRATION_TENSORFILE = [
    click.option("-o", "--output", "--output_path", "output", required=True, help="Calibration file to write (.npy)."),
    _spec(True),
    click.option("-m", "--max_batches", type=int, default=1, show_default=True, help="Batches of batch_size_per_gpu."),
    click.option("--use_validation_set", is_flag=True, help="Sample the validation set instead of the training set."),
    _STRICT,
]

# TAO 3.x's conversational (NeMo) tasks: `-e -r -k -m -g` and trailing Hydra overrides (TAO_CONVERSATIONAL.md).
_NEMO_GPUS = click.option("-g", "--gpus", type=int, default=1, show_default=True,
                          help="GPUs to use; more than one launches one process per GPU (torchrun).")


def _nemo_model(required: bool, help: str = "Trained model file (trained-model.tlt) or its exported .onnx."):
    return click.option("-m", "--model_path", required=required, default=None, help=help)


NEMO_TRAIN = [_spec(True), _results_dir(required=True), key_option(), _NEMO_GPUS, *TRAIN[3:]]
NEMO_FINETUNE = [*NEMO_TRAIN, _nemo_model(True, "Trained model file to fine-tune (trained-model.tlt).")]
NEMO_EVALUATE = [_spec(True), _nemo_model(False), key_option(), _results_dir(), _NEMO_GPUS,
                 click.option("-b", "--batch_size", type=int, default=None, help="Batch size (default: test_ds's)."),
                 _STRICT]
NEMO_INFER = [_spec(True), _nemo_model(False), key_option(), _results_dir(), _NEMO_GPUS]
NEMO_EXPORT = [_spec(False), _nemo_model(True, "Trained model file (trained-model.tlt)."), key_option(),
               _results_dir(),
               click.option("-o", "--output_file", default=None,
                            help="Output (default: the spec's export_to in -r): *.riva (a zip of the ONNX, tokenizer "
                                 "files and label maps), *.onnx or TAO's *.eonnx (plain ONNX)."),
               click.option("--data_type", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
                            help="int8: dynamic INT8 quantisation of the weights (onnxruntime), its agreement with "
                                 "fp32 printed (taoctl extension)."),
               _STRICT]
NEMO_DATASET_CONVERT = [_spec(True), _results_dir(), key_option()]
DOWNLOAD_SPECS = [click.option("-o", "--output_dir", required=True, type=click.Path(file_okay=False),
                               help="Folder to write the task's default spec files into."),
                  _results_dir()]

FLAGS = {"train": TRAIN, "evaluate": EVALUATE, "inference": INFERENCE, "prune": PRUNE, "export": EXPORT,
         "calibration_tensorfile": CALIBRATION_TENSORFILE,
         "nemo_train": NEMO_TRAIN, "nemo_finetune": NEMO_FINETUNE, "nemo_evaluate": NEMO_EVALUATE,
         "nemo_infer": NEMO_INFER, "nemo_export": NEMO_EXPORT, "nemo_dataset_convert": NEMO_DATASET_CONVERT,
         "download_specs": DOWNLOAD_SPECS}


def subtask_command(subtask: str, task_ref: str, help: str, options=(), flags: str | None = None) -> click.Command:
    """The click command of ``subtask`` for the task ``task_ref`` names (``module:attribute``).

    ``options``: the task's own flags, added after the shared ones (a task flag with the
    name of a shared one replaces it, e.g. inference's ``-i`` means an image or a folder).
    ``flags``: which shared flag set (a key of :data:`FLAGS`) and runner, when not the subtask's own
    name: the NeMo tasks' ``train`` is ``nemo_train``.
    """
    flag_set = flags or subtask

    def callback(**values):
        from taoctl.engine.runners import run_subtask

        return run_subtask(subtask, task_ref, values, runner=flag_set)

    return _command(FLAGS[flag_set], callback, help, options)


def _command(flag_set, callback, help: str, options) -> click.Command:
    """A click command of ``flag_set`` plus a task's own ``options`` (which replace shared flags of their names)."""
    own = list(options)
    own_names = {name for decorator in own for name in option_names(decorator)}
    shared = [d for d in flag_set if not own_names & set(option_names(d))]
    declared = own_names | {name for decorator in shared for name in option_names(decorator)}
    command = common_options(callback, exclude=declared)  # innermost: listed after the subtask's own flags
    for decorator in reversed(shared + own):
        command = decorator(command)
    command = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")(command)
    return click.command(context_settings=CONTEXT_SETTINGS, help=help)(command)


# TAO 5's tao-deploy (NVIDIA/tao_deploy, cv/<network>/scripts/*.py): `taoctl deploy <task> <action>`.
DEPLOY_GEN_TRT_ENGINE = [
    click.option("-m", "--model_path", required=True, help="Exported .onnx (or a taoctl .etlt, which is ONNX)."),
    click.option("-k", "--key", default=None, help="TAO's .etlt key; taoctl's exports are plain ONNX, so it is unused."),
    _spec(False),
    click.option("--data_type", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True),
    click.option("--engine_file", default=None, help="Engine to write (default: the model's name with .engine)."),
    click.option("--cal_image_dir", default=None,
                 help="INT8 of an fp32 ONNX: images to calibrate on (default: the spec's data)."),
    click.option("--cal_data_file", default=None,
                 help="INT8: calibration inputs (.npy), read when it exists and no --cal_image_dir is given, "
                      "else written."),
    click.option("--cal_cache_file", default=None, help="INT8: TensorRT calibration cache to write."),
    click.option("--cal_json_file", default=None, help="TAO's QAT scales file; unused: a taoctl QAT ONNX carries its scales in its QDQ nodes."),
    click.option("--force_ptq", is_flag=True, help="TAO's post-training quantisation of a QAT model; unused: an fp32 ONNX always calibrates."),
    click.option("--batch_size", type=int, default=1, show_default=True, help="INT8 calibration batch size."),
    click.option("--batches", type=int, default=10, show_default=True, help="INT8 calibration batches."),
    click.option("--max_batch_size", type=int, default=1, show_default=True,
                 help="TensorRT profile's largest batch."),
    click.option("--min_batch_size", type=int, default=1, show_default=True,
                 help="TensorRT profile's smallest batch."),
    click.option("--opt_batch_size", type=int, default=None,
                 help="TensorRT profile's optimal batch (default: half of --max_batch_size)."),
    click.option("--max_workspace_size", type=float, default=2.0, show_default=True,
                 help="TensorRT builder's workspace in GB, as tao-deploy's."),
    click.option("-s", "--strict_type_constraints", is_flag=True,
                 help="TensorRT layers keep the precision asked for (OBEY_PRECISION_CONSTRAINTS)."),
    _results_dir(),
    _STRICT,
]

DEPLOY_EVALUATE = [
    click.option("-m", "--model_path", required=True, help="TensorRT engine (gen_trt_engine's) or an .onnx."),
    _spec(True),
    click.option("-b", "--batch_size", type=int, default=None, help="Batch size (default: the spec's)."),
    _results_dir(),
    _STRICT,
]

DEPLOY_INFERENCE = [
    click.option("-m", "--model_path", required=True, help="TensorRT engine (gen_trt_engine's) or an .onnx."),
    _spec(True),
    click.option("-b", "--batch_size", type=int, default=None, help="Batch size (default: the spec's or 1)."),
    _results_dir(),
]

DEPLOY_FLAGS = {"gen_trt_engine": DEPLOY_GEN_TRT_ENGINE, "evaluate": DEPLOY_EVALUATE, "inference": DEPLOY_INFERENCE}


def deploy_command(action: str, task_ref: str, help: str, options=()) -> click.Command:
    """The click command of ``taoctl deploy <task> <action>`` (``engine/deploy.py`` runs it); as
    :func:`subtask_command`, ``options`` are the task's own flags."""

    def callback(**flags):
        from taoctl.engine.deploy import run_deploy

        return run_deploy(action, task_ref, flags)

    return _command(DEPLOY_FLAGS[action], callback, help, options)


def flag_names() -> dict[str, str]:
    """The running subtask command's flags as the user spells them, by click name (``image_dir`` -> ``-d``)."""
    return {param.name: param.opts[0] for param in click.get_current_context().command.params}


