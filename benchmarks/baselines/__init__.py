"""Networks written only to be measured against SegResMamba (not products of this project)."""

from .segmamba import GatedSpatialConv, SegMamba

__all__ = ["GatedSpatialConv", "SegMamba"]
