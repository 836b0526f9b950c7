"""`taoctl dataset augmentation -e SPEC.yaml`: TAO 5 offline augmentation of a KITTI dataset."""

from __future__ import annotations

from pathlib import Path

import click

from taoctl.engine.cli import CONTEXT_SETTINGS, results_dir_option, spec_option
from taoctl.errors import TaoctlError
from taoctl.outputs import refuse_overwrites


@click.command(context_settings=CONTEXT_SETTINGS,
               help="Augment a KITTI detection dataset offline (TAO 5 YAML spec); boxes follow the image.")
@spec_option()
@results_dir_option()
@click.option("--strict", is_flag=True, help="Fail (exit 2) when the input or output labels have any problem.")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=True,
              help="Parse the spec, check the paths it names, print the plan and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def command(experiment_spec, results_dir, strict, dry_run, verbose):
    from taoctl.engine.cli import finish_dry_run
    from taoctl.engine.data.augment import AugmentPlan
    from taoctl.tasks.augment import common, spec

    config = spec.load(experiment_spec, "augmentation")
    data = config.data
    # The first of these that is set is the output folder.
    out_choices = {"data.output_dataset": data.output_dataset, "-r": results_dir, "results_dir": config.results_dir}
    out_name = next((name for name, path in out_choices.items() if path), None)
    out_root = Path(out_choices[out_name]) if out_name else None
    if out_root is not None:
        refuse_overwrites({"-e": experiment_spec, "data.image_dir": data.image_dir, "data.ann_path": data.ann_path},
                          {out_name: out_root, f"{out_name}/images": out_root / "images",
                           f"{out_name}/labels": out_root / "labels"})
    if dry_run:
        return finish_dry_run(experiment_spec, config, spec.KINDS["augmentation"])
    if data.dataset_type != "kitti":
        raise TaoctlError(f"{experiment_spec}: data.dataset_type {data.dataset_type!r}: taoctl augments KITTI "
                          f"datasets; convert COCO to KITTI first")
    if out_root is None:
        raise TaoctlError(f"{experiment_spec}: set data.output_dataset (or -r/--results_dir) for the output")
    spatial, color = config.spatial_aug, config.color_aug
    units = spatial.rotation.units
    listed = spec.choices
    choices = {
        "rotation_degrees": [common.degrees(a, units) for a in listed(spatial.rotation.angle)],
        "shear_ratio_x": listed(spatial.shear.shear_ratio_x), "shear_ratio_y": listed(spatial.shear.shear_ratio_y),
        "translate_x": listed(spatial.translation.translate_x), "translate_y": listed(spatial.translation.translate_y),
        "hue_rotation_degrees": listed(color.hue.hue_rotation_angle),
        "saturation_factor": listed(color.saturation.saturation_shift),
        "contrast": listed(color.contrast.contrast), "contrast_center": listed(color.contrast.center),
        "brightness_offset": listed(color.brightness.offset),
        "blur_std": listed(config.blur_aug.std), "blur_size": listed(config.blur_aug.size),
    }
    plan = AugmentPlan(flip_horizontal=spatial.flip.flip_horizontal, flip_vertical=spatial.flip.flip_vertical,
                       output_width=data.output_image_width or 0, output_height=data.output_image_height or 0)
    common.run(data.image_dir, data.ann_path, out_root / "images", out_root / "labels", plan, config.random_seed,
               data.image_extension, choices=choices, strict=strict)
