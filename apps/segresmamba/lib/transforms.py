"""Turning a bundle's prediction into the label map that 3D Slicer edits."""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from custom_nets.bundle.brats import BRATS_LABELS, BRATS_REGIONS, regions_to_labels

__all__ = ["BRATS_LABELS", "BRATS_REGIONS", "BratsRegionsToLabelsd"]


class BratsRegionsToLabelsd(MapTransform):
    """(3, x, y, z) binary TC, WT, ET regions -> (x, y, z) BraTS labels: ET 4, TC without ET 1, WT without TC 2
    (``regions_to_labels``, as ``segresmamba predict`` writes them)."""

    def __init__(self, keys: KeysCollection):
        super().__init__(keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = regions_to_labels(d[key]).to(dtype=torch.uint8)
        return d
