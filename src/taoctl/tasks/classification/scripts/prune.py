"""taoctl classification prune: structured channel pruning of a trained model, TAO's flags.

Keeps the filters whose normalised L2 norm exceeds -pth, equalising layers tied by residual
adds/concatenations (-eq), rounding kept channels to -pg and keeping at least -nf. The output
.tlt records every layer's width, so it loads with no extra code and retrains through
train_config.pretrained_model_path. taoctl extensions: --criterion L2_bn scores filters with
their BatchNorm folded in; --cal_image_dir refits the layers fed by pruned channels so they
reproduce the unpruned model's outputs on those images; --classifier_input_ratio also prunes the
classifier's input features (the last layer's channels, which filter norms cannot rank) by how
much they move the logits on those images.
"""

from __future__ import annotations

import copy

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, MultiValueOption, key_option, results_dir_option


@click.command(context_settings=CONTEXT_SETTINGS, help=__doc__)
@click.option("-m", "--model", "model_path", required=True, help="Trained .tlt model.")
@click.option("-o", "--output_file", required=True, help="Pruned .tlt model to write.")
@key_option()
@click.option("-n", "--normalizer", type=click.Choice(["max", "L2"]), default="max", show_default=True,
              help="Normalise each layer's filter norms by their max or by their L2 norm.")
@click.option("-eq", "--equalization_criterion", default="union", show_default=True,
              type=click.Choice(["union", "intersection", "arithmetic_mean", "geometric_mean"]),
              help="How layers tied by element-wise ops combine their scores.")
@click.option("-pg", "--pruning_granularity", type=int, default=8, show_default=True,
              help="Kept channels are a multiple of this.")
@click.option("-pth", "--pruning_threshold", type=float, default=0.1, show_default=True,
              help="Filters whose normalised norm is at or below this are removed.")
@click.option("-nf", "--min_num_filters", type=int, default=16, show_default=True, help="Minimum filters per layer.")
@click.option("--criterion", type=click.Choice(["L2", "L2_bn"]), default="L2", show_default=True,
              help="Filter importance: L2 = the kernel's L2 norm (TAO); L2_bn = the norm after folding the "
                   "following BatchNorm's scale in, what the deployed layer computes (taoctl extension).")
@click.option("-el", "--excluded_layers", cls=MultiValueOption, default=(),
              help="Layers (or module prefixes such as features.1) never pruned.")
@click.option("--cal_image_dir", default=None,
              help="Images (searched recursively) on which every layer fed by pruned channels is refit by least "
                   "squares to reproduce the unpruned model's outputs (taoctl extension).")
@click.option("--cal_images", type=int, default=256, show_default=True,
              help="At most this many --cal_image_dir images are used.")
@click.option("--classifier_input_ratio", type=float, default=None,
              help="Keep this fraction of the classifier's input features (and the channels of the layer that "
                   "makes them), those that move the logits most on the --cal_image_dir images (taoctl extension).")
@results_dir_option()
@click.option("-v", "--verbose", is_flag=True, help="List every pruned layer; show tracebacks.")
def command(model_path, output_file, key, normalizer, equalization_criterion, pruning_granularity, pruning_threshold,
            min_num_filters, criterion, excluded_layers, cal_image_dir, cal_images, classifier_input_ratio,
            results_dir, verbose):
    from taoctl.engine import modelfile
    from taoctl.engine.pruning import count_macs_params, prune_classifier_inputs, prune_model, reconstruct
    from taoctl.errors import TaoctlError
    from taoctl.tasks.classification import common

    if classifier_input_ratio is not None and not cal_image_dir:
        raise TaoctlError("--classifier_input_ratio ranks features on images: pass --cal_image_dir too")

    model, manifest = common.load_classifier(model_path, key or None)
    calibration = _calibration_images(cal_image_dir, cal_images, manifest) if cal_image_dir else None
    original = copy.deepcopy(model) if calibration is not None else None
    head = getattr(model, "head_name", "") or ""
    report = prune_model(model, tuple(manifest["input_shape"]), threshold=pruning_threshold, normalizer=normalizer,
                         equalization=equalization_criterion, granularity=pruning_granularity,
                         min_filters=min_num_filters, excluded=list(excluded_layers),
                         output_layers=[head] if head else None, criterion=criterion)
    if verbose:
        for name, before, after in report.layers:
            click.echo(f"  {name}: {before} -> {after} channels")
    click.echo(f"Pruned {len(report.layers)} layer groups: {_sizes(report)}")
    if calibration is not None:
        refit = reconstruct(original, model, calibration, report.kept_outputs, log=click.echo if verbose else None)
        click.echo(f"Refit {len(refit)} layers on {len(calibration)} images from {cal_image_dir}")
    if classifier_input_ratio is not None:  # after the refit: rank the features the pruned model computes
        head_layer = prune_classifier_inputs(model, head, calibration, classifier_input_ratio, pruning_granularity,
                                             min_num_filters)
        if head_layer:
            report.layers.append(head_layer)
            report.macs_after, report.params_after = count_macs_params(model, tuple(manifest["input_shape"]))
            click.echo(f"Pruned the classifier's inputs ({head_layer[0]}): {head_layer[1]} -> {head_layer[2]} "
                       f"channels; {_sizes(report)}")
    manifest = {k: v for k, v in manifest.items() if k not in ("layers", "format", "format_version", "taoctl_version",
                                                                 "epoch", "metrics")}
    manifest["pruning"] = {"source": str(model_path), "threshold": pruning_threshold, "normalizer": normalizer,
                           "equalization_criterion": equalization_criterion, "criterion": criterion,
                           "granularity": pruning_granularity, "min_num_filters": min_num_filters,
                           "excluded_layers": list(excluded_layers),
                           "calibration_images": len(calibration) if calibration is not None else 0,
                           "classifier_input_ratio": classifier_input_ratio,
                           "params_before": report.params_before, "params_after": report.params_after,
                           "macs_before": report.macs_before, "macs_after": report.macs_after}
    modelfile.save_model(output_file, model, manifest, key=key or None)
    click.echo(f"Wrote {output_file}")
    return 0


def _sizes(report) -> str:
    return (f"parameters {report.params_before:,} -> {report.params_after:,} ({report.param_ratio * 100:.1f} %), "
            f"MACs {report.macs_before:,} -> {report.macs_after:,} "
            f"({report.macs_after / max(report.macs_before, 1) * 100:.1f} %)")


def _calibration_images(folder, count, manifest):
    """Up to ``count`` images of ``folder`` (a seeded random choice), preprocessed as the model expects."""
    import torch

    from taoctl.errors import TaoctlError
    from taoctl.tasks.classification import common

    paths = common.image_paths(folder, None)
    if not paths:
        raise TaoctlError(f"--cal_image_dir {folder}: no images found")
    shape = tuple(manifest["input_shape"])
    images, skipped = common.load_image_sample(paths, max(count, 1), shape, manifest.get("interpolation", "BILINEAR"),
                                               "center", False)
    if skipped:
        click.echo(f"Warning: skipped {len(skipped)} unreadable calibration images: " + "; ".join(skipped[:3]))
    if not len(images):
        raise TaoctlError(f"--cal_image_dir {folder}: none of the images could be read")
    return torch.from_numpy(common.normalizer_from_manifest(manifest).numpy(images))
