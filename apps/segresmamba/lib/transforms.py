"""Turning a bundle's prediction into the label map that 3D Slicer edits."""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

# BraTS label values (2021 convention): what annotators paint and what the bundle's training converts to regions.
BRATS_LABELS = {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4}
BRATS_REGIONS = ("tumour core (TC)", "whole tumour (WT)", "enhancing tumour (ET)")


class BratsRegionsToLabelsd(MapTransform):
    """(3, x, y, z) binary TC, WT, ET regions -> (x, y, z) BraTS labels: ET 4, TC without ET 1, WT without TC 2."""

    def __init__(self, keys: KeysCollection):
        super().__init__(keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            tc, wt, et = (d[key][i] > 0 for i in range(3))
            labels = torch.zeros_like(d[key][0], dtype=torch.uint8)
            labels[wt] = BRATS_LABELS["peritumoral edema"]
            labels[tc] = BRATS_LABELS["necrotic tumour core"]
            labels[et] = BRATS_LABELS["enhancing tumour"]
            d[key] = labels
        return d
