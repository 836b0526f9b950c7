"""DetectNet_v2's training targets from ``bbox_rasterizer_config``: coverage ellipses and encoded boxes.

Each object draws an ellipse of coverage into its class's channel of the stride-16 grid; the cells
it covers regress the object's box, encoded as DeepStream's DetectNet parser decodes it
(:mod:`taoctl.tasks.detectnet_v2.encoding`). The fields keep TAO's meaning (TAO TF1's
``bbox_rasterizer.bbox_from_rumpy_params``), in grid cells as TAO's output space is:

- ``cov_center_x/y``: where the ellipse's centre lies in the box, as a fraction of its width/height
  (0.5: the middle). The ellipse's semi-axes start from the distance between that centre and the
  box's nearer edge on each axis (half the width/height for a centred ellipse).
- ``cov_radius_x/y``: those semi-axes scaled by this factor (TAO's samples: 0.4 for cars, 1.0 for
  pedestrians: the ellipse fills the box).
- ``bbox_min_radius``: the smallest semi-axis, in grid cells; a smaller ellipse is enlarged keeping
  its aspect ratio (TAO's order: first x, then y), so a small object still covers cells.
- ``deadzone_radius``: the ignored ring around the ellipse reaches ``(1 - d) * cov + d * half-box``
  on each axis (TAO's interpolation), and never less than the ellipse itself.

Where taoctl differs from TAO, and why (the FEASIBILITY recipe that reached 89.7 mAP50 on BCCD):
- The dead zone has loss weight 0 (``cov_weight``): TAO instead writes coverage 0 there to separate
  overlapping objects; a cell next to an object is neither clearly on nor off, so it is not taught.
  The dead zone keeps its size relative to the ellipse when ``bbox_min_radius`` enlarges the
  ellipse (TAO's would vanish inside the enlarged ellipse), so small objects keep their ring too.
- A cell two objects of one class claim goes to the nearer one (distance relative to each ellipse),
  not to the one lower in the image (TAO's depth order, right for street scenes only).
- The cell holding the box's centre is always positive, however small the box.
- Coverage is 1 inside the ellipse (TAO's ``cov`` objective draws a constant 1 too), and the box
  regression counts on exactly those cells (``bbox_weight``).

The recipe's ellipse, semi-axes ``max(0.25 * side, 0.6 * 16 px)`` with the dead zone out to 1.5x,
is ``cov_center 0.5, cov_radius 0.5, bbox_min_radius 0.6, deadzone_radius 0.5`` here.
TAO's sample values (car: radius 0.4, dead zone 0.4 -> ring out to 1.6x the ellipse;
pedestrian: radius 1.0 -> no ring) behave as they do in TAO.
"""

from __future__ import annotations

import dataclasses

import torch

from taoctl.errors import TaoctlError
from taoctl.tasks.detectnet_v2.encoding import BBOX_NORM, CELL_OFFSET, STRIDE

# TAO's floor on a semi-axis (grid cells) before bbox_min_radius, guarding the divisions below.
_MIN_SEMI_AXIS = 0.1


@dataclasses.dataclass
class ClassRasterConfig:
    cov_center_x: float
    cov_center_y: float
    cov_radius_x: float
    cov_radius_y: float
    bbox_min_radius: float


def rasterizer_configs(spec, class_names: list[str]) -> tuple[list[ClassRasterConfig], float]:
    """Per target class (in ``class_names`` order) its ``bbox_rasterizer_config`` entry, and ``deadzone_radius``."""
    raster = spec.bbox_rasterizer_config
    by_name = {name.lower(): config for name, config in raster.target_class_config.items()}
    missing = [name for name in class_names if name not in by_name]
    if missing:
        have = ", ".join(sorted(by_name)) or "none"
        raise TaoctlError(f"bbox_rasterizer_config.target_class_config has no entry for target class(es) "
                          f"{', '.join(missing)} (it has: {have})")
    configs = []
    for name in class_names:
        entry = by_name[name]
        if entry.cov_radius_x <= 0 or entry.cov_radius_y <= 0:
            raise TaoctlError(f"bbox_rasterizer_config.target_class_config[{name}]: cov_radius_x and cov_radius_y "
                              f"must be > 0 (got {entry.cov_radius_x:g}, {entry.cov_radius_y:g})")
        configs.append(ClassRasterConfig(entry.cov_center_x, entry.cov_center_y, entry.cov_radius_x,
                                         entry.cov_radius_y, entry.bbox_min_radius))
    return configs, float(raster.deadzone_radius)


def _ellipses(boxes: torch.Tensor, params: torch.Tensor, deadzone_radius: float):
    """Centres and semi-axes of each box's ellipse, in grid cells, and its dead zone's size relative to it.

    ``boxes`` [M, 4] in grid cells; ``params`` [M, 5]: the class's ClassRasterConfig fields.
    """
    x1, y1, x2, y2 = boxes.unbind(1)
    center_x, center_y, radius_x, radius_y, min_radius = params.unbind(1)
    cx = x1 + center_x * (x2 - x1)
    cy = y1 + center_y * (y2 - y1)
    half_x = torch.where(center_x < 0.5, cx - x1, x2 - cx)
    half_y = torch.where(center_y < 0.5, cy - y1, y2 - cy)
    sx = (radius_x * half_x).clamp(min=_MIN_SEMI_AXIS)
    sy = (radius_y * half_y).clamp(min=_MIN_SEMI_AXIS)
    # The dead zone's extent relative to the unclamped ellipse (TAO's interpolation), kept when
    # bbox_min_radius enlarges the ellipse below.
    ratio_x = ((1.0 - deadzone_radius) * sx + deadzone_radius * half_x) / sx
    ratio_y = ((1.0 - deadzone_radius) * sy + deadzone_radius * half_y) / sy
    ratio_x, ratio_y = ratio_x.clamp(min=1.0), ratio_y.clamp(min=1.0)
    # bbox_min_radius keeps the aspect ratio: x first, then y, as TAO does.
    grow = torch.where(sx < min_radius, min_radius / sx, torch.ones_like(sx))
    sx, sy = sx * grow, sy * grow
    grow = torch.where(sy < min_radius, min_radius / sy, torch.ones_like(sy))
    sx, sy = sx * grow, sy * grow
    return cx, cy, sx, sy, ratio_x, ratio_y


def rasterize(boxes: list[torch.Tensor], classes: list[torch.Tensor], num_classes: int, grid_h: int, grid_w: int,
              configs: list[ClassRasterConfig], deadzone_radius: float) -> dict[str, torch.Tensor]:
    """Targets of a batch: ``boxes[b]`` float [N_b, 4] x1 y1 x2 y2 in input pixels, ``classes[b]`` int64 [N_b].

    Returns ``cov`` [B, C, Hg, Wg] (0 or 1), ``bbox`` [B, 4C, Hg, Wg] (channels 4k..4k+3: class k's
    l, t, r, b / BBOX_NORM from the parser's cell centres), ``cov_weight`` [B, C, Hg, Wg] (0 in the
    dead zone) and ``bbox_weight`` [B, C, Hg, Wg] (1 where the box regression counts).
    """
    batch = len(boxes)
    cells = grid_h * grid_w
    groups = batch * num_classes
    device = boxes[0].device if batch else torch.device("cpu")
    cov = torch.zeros(groups, cells, device=device)
    deadzone = torch.zeros(groups, cells, device=device)
    bbox = torch.zeros(groups, cells, 4, device=device)
    counts = [len(b) for b in boxes]
    if sum(counts):
        all_boxes = torch.cat([b.reshape(-1, 4).float() for b in boxes])
        all_classes = torch.cat([c.reshape(-1).long() for c in classes])
        image_index = torch.repeat_interleave(torch.arange(batch, device=device), torch.tensor(counts, device=device))
        group = image_index * num_classes + all_classes
        table = torch.tensor([dataclasses.astuple(c) for c in configs], dtype=torch.float32, device=device)
        cx, cy, sx, sy, ratio_x, ratio_y = _ellipses(all_boxes / STRIDE, table[all_classes], deadzone_radius)

        # Distance of every cell's geometric centre from every ellipse's centre, in units of that ellipse.
        col = torch.arange(grid_w, dtype=torch.float32, device=device) + 0.5
        row = torch.arange(grid_h, dtype=torch.float32, device=device) + 0.5
        dx = (col[None, :] - cx[:, None]) / sx[:, None]  # [M, Wg]
        dy = (row[None, :] - cy[:, None]) / sy[:, None]  # [M, Hg]
        distance = (dy[:, :, None] ** 2 + dx[:, None, :] ** 2).sqrt().reshape(-1, cells)  # [M, Hg*Wg]
        in_deadzone = ((dy / ratio_y[:, None])[:, :, None] ** 2
                       + (dx / ratio_x[:, None])[:, None, :] ** 2).reshape(-1, cells) <= 1.0
        # The cell holding the box's centre is always covered.
        centre_col = cx.floor().long().clamp(0, grid_w - 1)
        centre_row = cy.floor().long().clamp(0, grid_h - 1)
        objects = torch.arange(len(group), device=device)
        centre_cell = centre_row * grid_w + centre_col
        distance[objects, centre_cell] = distance[objects, centre_cell].clamp(max=1.0)

        inside = distance <= 1.0
        expanded_group = group[:, None].expand(-1, cells)
        deadzone = deadzone.scatter_reduce(0, expanded_group, (in_deadzone & ~inside).float(), reduce="amax")
        # Each covered cell belongs to the nearest object of its group: the smallest distance, ties to
        # the lower object index.
        claim = torch.where(inside, distance, torch.full_like(distance, float("inf")))
        nearest = torch.full((groups, cells), float("inf"), device=device).scatter_reduce(
            0, expanded_group, claim, reduce="amin")
        wins = inside & (claim == nearest[group])
        owner_candidates = torch.where(wins, objects[:, None], torch.full_like(distance, len(group), dtype=torch.long))
        owner = torch.full((groups, cells), len(group), dtype=torch.long, device=device).scatter_reduce(
            0, expanded_group, owner_candidates, reduce="amin")
        covered = owner < len(group)
        cov[covered] = 1.0
        # Encode each covered cell's owner box from the parser's cell centres.
        parser_x = (torch.arange(grid_w, dtype=torch.float32, device=device) * STRIDE + CELL_OFFSET).repeat(grid_h)
        parser_y = (torch.arange(grid_h, dtype=torch.float32, device=device) * STRIDE + CELL_OFFSET
                    ).repeat_interleave(grid_w)
        group_index, cell_index = covered.nonzero(as_tuple=True)
        owned = all_boxes[owner[group_index, cell_index]]
        px, py = parser_x[cell_index], parser_y[cell_index]
        bbox[group_index, cell_index] = torch.stack(
            [px - owned[:, 0], py - owned[:, 1], owned[:, 2] - px, owned[:, 3] - py], dim=1) / BBOX_NORM
    covered = cov > 0
    cov_weight = torch.where((deadzone > 0) & ~covered, 0.0, 1.0)
    shape = (batch, num_classes, grid_h, grid_w)
    return {
        "cov": cov.reshape(shape),
        "bbox": bbox.reshape(batch, num_classes, grid_h, grid_w, 4).permute(0, 1, 4, 2, 3)
                    .reshape(batch, 4 * num_classes, grid_h, grid_w),
        "cov_weight": cov_weight.reshape(shape),
        "bbox_weight": cov.reshape(shape).clone(),
    }
