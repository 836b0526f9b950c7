"""ssd spec kinds: so far only the shared dataset_convert spec (its experiment proto is still to come)."""

from taoctl.tasks.detection_common.spec import KINDS, load

__all__ = ["KINDS", "load"]
