"""`taoctl augment -a SPEC -d DATASET_DIR -o OUTPUT_DIR`: TAO 3.x offline augmentation of a KITTI dataset."""

from __future__ import annotations

from pathlib import Path

import click

from taoctl.engine.cli import CONTEXT_SETTINGS
from taoctl.outputs import refuse_overwrites


@click.command(context_settings=CONTEXT_SETTINGS,
               help="Augment a KITTI detection dataset offline (TAO 3.x augment spec); boxes follow the image.")
@click.option("-a", "--augmentation_spec", "--augmentation-spec", "spec_path", required=True,
              type=click.Path(dir_okay=False), help="Augmentation spec (protobuf text).")
@click.option("-d", "--dataset_folder", "--dataset-folder", "dataset_dir", required=True,
              type=click.Path(file_okay=False), help="Dataset folder holding dataset_config's image and label folders.")
@click.option("-o", "--output_dataset", "--output-dataset", "output_dir", required=True,
              type=click.Path(file_okay=False), help="Output folder (same layout).")
@click.option("--seed", type=int, default=None, help="Random seed (default: the spec's random_seed, else 42).")
@click.option("--strict", is_flag=True, help="Fail (exit 2) when the input or output labels have any problem.")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=True,
              help="Parse the spec, check the paths it names, print the plan and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def command(spec_path, dataset_dir, output_dir, seed, strict, dry_run, verbose):
    from taoctl.engine.cli import finish_dry_run
    from taoctl.engine.data.augment import AugmentPlan
    from taoctl.tasks.augment import common, spec

    config = spec.load(spec_path, "augment")
    images = config.dataset_config.image_path or "images"
    labels = config.dataset_config.label_path or "labels"
    image_dir, label_dir = Path(dataset_dir) / images, Path(dataset_dir) / labels
    out_image_dir, out_label_dir = Path(output_dir) / images, Path(output_dir) / labels
    refuse_overwrites({"-a": spec_path, "-d": dataset_dir, f"-d/{images}": image_dir, f"-d/{labels}": label_dir},
                      {"-o": output_dir, f"-o/{images}": out_image_dir, f"-o/{labels}": out_label_dir})
    if dry_run:
        return finish_dry_run(spec_path, config, spec.KINDS["augment"], {"-d": dataset_dir})
    spatial, color = config.spatial_config, config.color_config
    plan = AugmentPlan(
        rotation_degrees=common.degrees(spatial.rotation_config.angle, spatial.rotation_config.units),
        shear_ratio_x=spatial.shear_config.shear_ratio_x, shear_ratio_y=spatial.shear_config.shear_ratio_y,
        flip_horizontal=spatial.flip_config.flip_horizontal, flip_vertical=spatial.flip_config.flip_vertical,
        translate_x=spatial.translation_config.translate_x, translate_y=spatial.translation_config.translate_y,
        hue_rotation_degrees=color.hue_saturation_config.hue_rotation_angle,
        # proto3 reads unset as 0: TAO's neutral values are a saturation factor of 1 and a centre of 127.5.
        saturation_factor=color.hue_saturation_config.saturation_shift or 1.0,
        contrast=color.contrast_config.contrast, contrast_center=color.contrast_config.center or 127.5,
        brightness_offset=color.brightness_config.offset,
        blur_std=config.blur_config.std, blur_size=config.blur_config.size,
        output_width=config.output_image_width, output_height=config.output_image_height)
    seed = seed if seed is not None else (config.random_seed or 42)
    common.run(image_dir, label_dir, out_image_dir, out_label_dir, plan, seed, config.image_extension or None,
               strict=strict)
