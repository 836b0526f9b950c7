"""DetectNet_v2 inference outputs as TAO's ``inference`` writes them (``bbox_handler_config``).

Per image: ``images_annotated/<image file name>``, the original image with each detection drawn in
its class colour (``overlay_linewidth`` pixels) and labelled ``class:confidence``, unless
``disable_overlay``; and, only when ``kitti_dump`` is true (TAO writes no labels otherwise),
``labels/<stem>.txt`` with one KITTI line per detection whose 16th field is the confidence. Boxes are
clustered in network-input pixels and scaled back to the original image. As TAO: classes are drawn
and written in ``postproc_classes`` (default: all target classes), named by their ``output_map``
when set, coloured by ``bbox_color`` (a class without an entry takes the ``default`` entry's,
else green).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from taoctl.engine.data.kitti import KittiObject
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_paths

_TAO_DEFAULT_COLOR = (0, 255, 0)
_TAO_SAMPLE_LINE_WIDTH = 2
# Without a bbox_handler_config (inference from the experiment spec), distinct colours per class.
_PALETTE = ((0, 255, 0), (255, 0, 0), (0, 128, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
            (255, 128, 0), (128, 0, 255))


@dataclasses.dataclass
class OverlayOptions:
    kitti_dump: bool
    disable_overlay: bool
    line_width: int
    colors: dict[str, tuple[int, int, int]]
    classes: list[str] | None  # postproc_classes: the classes written, None for all
    output_names: dict[str, str] = dataclasses.field(default_factory=dict)  # output_map: name in the outputs


def overlay_options(bbox_handler_config, class_names: Sequence[str]) -> OverlayOptions:
    """Options from an inference spec's ``bbox_handler_config``; None (experiment spec): labels and overlays."""
    if bbox_handler_config is None:
        return OverlayOptions(kitti_dump=True, disable_overlay=False, line_width=_TAO_SAMPLE_LINE_WIDTH,
                              colors={n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(class_names)},
                              classes=None)
    entries = {str(k).lower(): v for k, v in bbox_handler_config.classwise_bbox_handler_config.items()}
    colors, output_names = {}, {}
    for name in class_names:
        entry = entries.get(name.lower(), entries.get("default"))
        colors[name] = _TAO_DEFAULT_COLOR
        if entry is not None and entry.HasField("bbox_color"):
            colors[name] = (entry.bbox_color.R, entry.bbox_color.G, entry.bbox_color.B)
        if name.lower() in entries and entries[name.lower()].output_map:
            output_names[name] = entries[name.lower()].output_map
    classes = None
    if bbox_handler_config.postproc_classes:
        known = {n.lower(): n for n in class_names}
        classes = []
        for name in bbox_handler_config.postproc_classes:
            if name.lower() not in known:
                raise TaoctlError(f"bbox_handler_config.postproc_classes: {name!r} is not a target class "
                                  f"({', '.join(class_names)})")
            classes.append(known[name.lower()])
    # TAO draws one outline and then overlay_linewidth more: an unset width still draws 1 pixel.
    return OverlayOptions(kitti_dump=bool(bbox_handler_config.kitti_dump),
                          disable_overlay=bool(bbox_handler_config.disable_overlay),
                          line_width=max(int(bbox_handler_config.overlay_linewidth), 1),
                          colors=colors, classes=classes, output_names=output_names)


def _scaled(boxes: np.ndarray, original_size: tuple[int, int], network_size: tuple[int, int]) -> np.ndarray:
    """Network-input pixel boxes -> original image pixels, clipped to the original image."""
    (ow, oh), (nw, nh) = original_size, network_size
    scale = np.array([ow / nw, oh / nh, ow / nw, oh / nh], dtype=np.float64)
    return np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale, 0, [ow, oh, ow, oh])


def write_results(out_dir: Path, image_path: str, original_size: tuple[int, int], network_size: tuple[int, int],
                  detections: list[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str],
                  options: OverlayOptions) -> None:
    """One image's outputs: the annotated image and/or its KITTI labels (see the module docstring).

    ``detections[k]`` is class ``class_names[k]``'s (boxes [N, 4] in network pixels, confidences [N]);
    sizes are (width, height). Both files of an image appear together or not at all.
    """
    out_dir = Path(out_dir)
    name = Path(image_path).name
    index = {n: k for k, n in enumerate(class_names)}
    drawn = []  # (output name, colour, box, confidence)
    for class_name in options.classes or class_names:
        boxes, confidences = detections[index[class_name]]
        label = options.output_names.get(class_name, class_name)
        for box, confidence in zip(_scaled(boxes, original_size, network_size), np.asarray(confidences)):
            drawn.append((label, options.colors.get(class_name, _TAO_DEFAULT_COLOR), box, float(confidence)))
    with atomic_paths() as stage:
        if not options.disable_overlay:
            with Image.open(image_path) as source:
                image = source.convert("RGB")
            if image.size != tuple(original_size):
                raise TaoctlError(f"{image_path}: image is {image.size[0]}x{image.size[1]}, "
                                  f"detections were scaled for {original_size[0]}x{original_size[1]}")
            draw = ImageDraw.Draw(image)
            for label, color, (x1, y1, x2, y2), confidence in drawn:
                draw.rectangle((x1, y1, x2, y2), outline=color, width=options.line_width)
                draw.text((x1, y1), f"{label}:{confidence:.3f}", fill=color)
            image.save(stage(out_dir / "images_annotated" / name))
        if options.kitti_dump:
            lines = [KittiObject(label, tuple(float(v) for v in box), score=confidence).to_line()
                     for label, _, box, confidence in drawn]
            stage(out_dir / "labels" / f"{Path(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
