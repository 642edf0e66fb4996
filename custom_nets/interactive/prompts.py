"""Training targets that only a click can name: any structure of a many-structure label map as the clicked label.

A click-guided model trained on the organs it segments can reach a low loss without reading the clicks at all (the
image says where the organ is), and then ignores them on a scan unlike its training scans. With a label map that
outlines many more structures than the model's labels (TotalSegmentator's outlines 100 and more), a share of the
training samples can take structures picked at random as the targets of foreground labels picked at random: the image
alone then cannot say what to segment, nor under which label; the clicks placed in each structure (MONAI's DeepEdit
click simulation) can.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

__all__ = ["PromptAnyStructured"]


class PromptAnyStructured(Randomizable, MapTransform):
    """With probability ``prob``, the label becomes up to ``structures`` structures of the label map, picked at random,
    each under a different foreground label of the model, also picked at random (a structure that is one of the
    model's organs too: only the clicks then say which label a structure takes); otherwise the label keeps the
    model's labels only. Either way every value that is not a label of the model is cleared, so the transform leaves
    an ordinary label map as it is when ``prob`` is 0.

    Put it before the crop (so that the crop finds the structures) and before DeepEdit's seed and guidance transforms.

    Args:
        keys: the label map, ``(1, D, H, W)``: the model's labels under their own values, any other structure under
            a value of its own that is not one of them.
        label_names: the model's labels, name -> value, background (value 0) included.
        prob: the share of samples whose target is structures picked at random.
        structures: how many structures such a sample takes, at most (no more than the model has foreground labels
            and the label map has structures large enough). A model with many labels learns to follow each label's
            clicks from several structures a sample.
        min_voxels: structures smaller than this in the sample are not picked (a few voxels give no click).
    """

    def __init__(
        self,
        keys,
        label_names: Mapping[str, int],
        prob: float = 0.0,
        structures: int = 1,
        min_voxels: int = 64,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if isinstance(structures, bool) or not isinstance(structures, int) or structures < 1:
            raise ValueError(f"structures must be a whole number >= 1, got {structures!r}")
        self.values = sorted({int(v) for v in label_names.values() if int(v) != 0})
        if not self.values:
            raise ValueError(f"label_names needs a foreground label, got {dict(label_names)}")
        self.prob, self.structures, self.min_voxels = float(prob), structures, int(min_voxels)

    def randomize(self, data: Any = None) -> None:
        self._prompt = self.R.random_sample() < self.prob

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            d[key] = self._target(d[key])
        return d

    def _target(self, label):
        values = torch.as_tensor(label).round().to(torch.int32)  # not int64: a CT holds tens of millions of voxels
        if self._prompt:
            present, counts = torch.unique(values, return_counts=True)
            candidates = [int(v) for v, n in zip(present, counts) if v != 0 and n >= self.min_voxels]
            if candidates:
                count = min(self.structures, len(candidates), len(self.values))
                chosen = self.R.choice(candidates, size=count, replace=False)
                taken = self.R.choice(self.values, size=count, replace=False)
                target = torch.zeros_like(values)
                for structure, value in zip(chosen.tolist(), taken.tolist()):
                    target[values == structure] = value
                return _like(label, target)
        own = torch.zeros_like(values, dtype=torch.bool)
        for value in self.values:
            own |= values == value
        return _like(label, values * own)


def _like(label, values: torch.Tensor):
    """``values`` in ``label``'s type and dtype (a MetaTensor keeps its metadata)."""
    if isinstance(label, np.ndarray):
        return values.numpy().astype(label.dtype)
    out = label.clone() if hasattr(label, "clone") else torch.as_tensor(label)
    out.copy_(values.to(out.dtype))
    return out
