"""DetectNet_v2's output grid and box encoding, as DeepStream's built-in DetectNet parser decodes it.

nvinfer's network-type 0 parser reads ``output_bbox`` per grid cell as (l, t, r, b) distances from
the cell's "centre" ``col * stride + 0.5`` (not the geometric centre: the parser's constant), in units
of ``bbox_norm`` = 35 pixels. Encoding boxes the same way lets an exported model deploy with
DeepStream's stock parser and TAO's published configs.
"""

from __future__ import annotations

import numpy as np

STRIDE = 16
BBOX_NORM = 35.0
CELL_OFFSET = 0.5


def cell_centres(grid_h: int, grid_w: int) -> tuple[np.ndarray, np.ndarray]:
    """The parser's cell centres in input pixels: ``(cx[grid_w], cy[grid_h])``."""
    return (np.arange(grid_w, dtype=np.float32) * STRIDE + CELL_OFFSET,
            np.arange(grid_h, dtype=np.float32) * STRIDE + CELL_OFFSET)
