"""taoctl: NVIDIA TAO Toolkit's command line and spec files on open PyTorch code."""

__version__ = "0.1.0"
