"""The one place taoctl imports torchvision, with pure-torch stand-ins for its compiled ops.

torchvision's compiled extension (``_C.so``) only loads beside the torch build it was made
for. Beside another build (here: a CUDA torchvision with CPU torch) ``import torchvision``
dies with "operator torchvision::nms does not exist", because its Python side registers
fake kernels for ops the missing library would have defined. ``import_torchvision()``
checks whether the compiled ops are there; only when they are not does it define the
``torchvision::nms``/``qnms`` schemas with pure-torch kernels before importing, and lets
``torchvision.ops.nms``/``batched_nms`` use them. ``box_iou`` and ``roi_align`` are pure
Python in torchvision already (roi_align is run eagerly: torchvision would torch.compile it
on first use, which needs a C++ toolchain and takes half a minute on CPU); ops with no
stand-in here (roi_pool, ps_roi_*, deform_conv2d) keep torchvision's own "Couldn't load
custom C++ ops" error. On a matching install
nothing is registered and torchvision runs its compiled kernels.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

import torch

_LIBRARY = None  # the torch.library.Library holding our definitions; must stay alive


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, torchvision's semantics, in plain torch.

    Boxes are (x1, y1, x2, y2); a box is dropped when its IoU with a higher-scoring kept box
    is above ``iou_threshold``. Returns the kept indices (int64) by decreasing score.
    One vectorised IoU row per kept box, so memory stays O(N).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]  # NaN IoU (empty boxes) never suppresses
    return torch.stack(keep).to(torch.int64)


def _qnms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    # torchvision passes the integer representations; IoU is scale-free, so NMS on them agrees.
    return nms(dets.to(torch.float32), scores.to(torch.float32), iou_threshold)


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _load_compiled_ops() -> None:
    """Load torchvision's _C extension the way torchvision does, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed")
    folder = list(spec.submodule_search_locations)[0]
    candidates = [f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith((".so", ".pyd"))]
    if not candidates:
        raise ImportError(f"no compiled torchvision extension in {folder}")
    torch.ops.load_library(os.path.join(folder, candidates[0]))


def fallback_needed(op_exists: Callable[[str], bool] = _op_exists,
                    load_compiled: Callable[[], None] = _load_compiled_ops) -> bool:
    """True only when torchvision's compiled nms cannot be had (not registered, will not load)."""
    if op_exists("nms"):
        return False
    try:
        load_compiled()
    except (ImportError, OSError, RuntimeError):
        return True
    return not op_exists("nms")


def _register_fallbacks() -> None:
    global _LIBRARY
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for key in ("CPU", "CUDA"):
        library.impl("nms", nms, key)
        library.impl("qnms", _qnms, key)
    _LIBRARY = library


def uses_fallback() -> bool:
    """Whether this process runs torchvision on taoctl's stand-in ops."""
    return _LIBRARY is not None


def import_torchvision():
    """``import torchvision``, registering the pure-torch ops first when the compiled ones are missing."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if _LIBRARY is None and fallback_needed():
        _register_fallbacks()
    import torchvision

    if _LIBRARY is not None:
        # torchvision refuses to call any op while its extension is missing; nms now exists.
        sys.modules["torchvision.ops.boxes"]._assert_has_ops = lambda: None
        # (torchvision.ops.roi_align is the function; the module is only in sys.modules.)
        roi_module = sys.modules["torchvision.ops.roi_align"]
        roi_module._roi_align = getattr(roi_module._roi_align, "__wrapped__", roi_module._roi_align)
    return torchvision
