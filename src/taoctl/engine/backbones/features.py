"""Multi-scale feature maps from any registered backbone, for detectors (timm's ``features_only``).

A :class:`FeatureBackbone` is a classifier's trunk cut after the deepest level a detector
reads (detectnet_v2: stride 16; yolo_v3: strides 8, 16 and 32). It adopts the classifier's
modules under their own names, so ImageNet, torchvision and TAO-classification weights load
onto it by name, a pruned model file's layer widths apply to it, and TAO's ``freeze_blocks``
count the same blocks. The classifier head and every layer past the cut are dropped, never run.
"""

from __future__ import annotations

from taoctl.errors import TaoctlError

from ._base import Backbone, TrunkNetwork


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class FeatureBackbone(TrunkNetwork):
    """Returns the feature maps at ``strides`` (ascending) as a list; ``channels`` gives their depths.

    Each level is the deepest trunk module at that stride (``feature_info``), and
    ``level_names`` are those modules' names.
    """

    def __init__(self, backbone: Backbone, strides):
        super().__init__()
        self.arch = backbone.arch
        self.input_shape = backbone.input_shape
        levels = {level.stride: level for level in backbone.feature_info()}
        self.strides = tuple(sorted({int(s) for s in strides}))
        available = ", ".join(str(s) for s in levels)
        if not self.strides:
            raise TaoctlError(f"{self.arch}: no feature strides chosen (it has {available})")
        for stride in self.strides:
            if stride not in levels:
                raise TaoctlError(f"{self.arch} has no stride-{stride} feature level (its strides: {available})")
        self.level_names = tuple(levels[s].module for s in self.strides)
        cut = backbone.trunk_names.index(self.level_names[-1]) + 1
        self.trunk_names = list(backbone.trunk_names[:cut])
        for name, child in backbone.named_children():
            if any(_within(kept, name) for kept in self.trunk_names):
                self.add_module(name, child)
        present = dict(self.named_modules())
        for name in backbone.trunk_names[cut:]:
            parent, _, child = name.rpartition(".")
            if parent and parent in present:  # top-level layers past the cut were never adopted
                delattr(present[parent], child)
        present = dict(self.named_modules())
        blocks = [[n for n in names if n in present] for names in backbone.block_names]
        last = max(i for i, names in enumerate(blocks) if names)
        self.block_names = blocks[:last + 1]

    def describe(self) -> str:
        return f"{self.arch} cut at stride {self.strides[-1]}"

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of each returned map, measured (so still right after pruning)."""
        by_module = {level.module: level.channels for level in self.feature_info()}
        return tuple(by_module[name] for name in self.level_names)

    def forward(self, x):
        maps = []
        # Looked up by name on every call: loading a pruned model file replaces layers in place.
        for name in self.trunk_names:
            x = self.get_submodule(name)(x)
            if name in self.level_names:
                # Safe to keep while x flows on: the next trunk module changes the resolution
                # (a strided conv or a pool), so it never modifies its input in place.
                maps.append(x)
        return maps
