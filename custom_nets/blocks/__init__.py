"""Building blocks of SegResMamba."""

from .cmmb import TOM_POSITIONS, ConvMambaMixedBlock
from .decoder import SKIP_FUSIONS, DecoderStage, PreActResBlock
from .encoder import Downsample, SkipMLP
from .tom import DIRECTIONS, DirectionalScan, TriOrientedMamba

__all__ = [
    "ConvMambaMixedBlock",
    "DIRECTIONS",
    "DecoderStage",
    "DirectionalScan",
    "Downsample",
    "PreActResBlock",
    "SKIP_FUSIONS",
    "SkipMLP",
    "TOM_POSITIONS",
    "TriOrientedMamba",
]
