"""Transforms that bundle configs name in their postprocessing (``custom_nets.bundle.transforms.<name>``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["RegionsToLabelsd"]


class RegionsToLabelsd(MapTransform):
    """Binary region channels -> one label map: each ``(channel, value)`` of ``paint`` in turn sets the voxels of
    its channel to its value, later pairs over earlier ones; voxels in no painted channel are 0.

    A BraTS bundle predicts the overlapping regions TC, WT, ET (channels 0, 1, 2) and paints
    ``[[1, 2], [0, 1], [2, 4]]``: whole tumour 2 (edema), tumour core over it 1 (necrotic core), enhancing tumour
    over both 4: the label values its training converts into these regions
    (``ConvertToMultiChannelBasedOnBratsClassesd``).

    Args:
        keys: the prediction's keys.
        paint: ``(channel, label value)`` pairs in painting order; values in 1..255.
        allow_missing_keys: do not raise for a missing key.

    Shapes:
        a ``(C, X, Y, Z)`` tensor or array (``> 0`` is inside a region) -> ``(1, X, Y, Z)`` uint8 of the same kind,
        its metadata kept.
    """

    def __init__(self, keys: KeysCollection, paint: Sequence[Sequence[int]], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        pairs = [tuple(pair) for pair in paint]
        if not pairs or any(len(p) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in p)
                            for p in pairs):  # fmt: skip
            raise ValueError(f"paint takes [channel, label value] pairs of whole numbers, not {paint!r}")
        if any(channel < 0 or not 0 < value < 256 for channel, value in pairs):
            raise ValueError(f"paint takes channels >= 0 and label values in 1..255, not {paint!r}")
        self.paint = pairs

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            if regions.shape[0] <= max(channel for channel, _ in self.paint):
                raise ValueError(f"{key} has {regions.shape[0]} channel(s); paint names channels up to "
                                 f"{max(channel for channel, _ in self.paint)}")  # fmt: skip
            xp = torch if isinstance(regions, torch.Tensor) else np
            labels = xp.zeros_like(regions[:1], dtype=xp.uint8)
            for channel, value in self.paint:
                labels[regions[channel : channel + 1] > 0] = value
            d[key] = labels
        return d
