"""SegResMamba for MONAI: the network, its blocks, and a selective scan for CPU and CUDA.

MONAI bundle configs build the network by its import path, ``"_target_": "custom_nets.SegResMamba"``.
"""

from .networks import SegResMamba
from .ops import selective_scan

__all__ = ["SegResMamba", "selective_scan"]
__version__ = "0.1.0"
