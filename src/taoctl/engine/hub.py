"""Model hub names a spec may give instead of a weights file (``torchvision:<model>``, ``timm:<model>``).

Kept free of torch so spec checks (``--dry-run``, ``taoctl spec check``) can tell a hub name from
a missing file; taoctl.engine.pretrained resolves the names.
"""

from __future__ import annotations

HUB_SCHEMES = ("torchvision", "timm")


def is_hub_name(value: str) -> bool:
    scheme, sep, model = value.partition(":")
    return bool(sep and model) and scheme in HUB_SCHEMES
