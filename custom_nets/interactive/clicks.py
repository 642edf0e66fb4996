"""Clicks as MONAI Label passes them (label name -> list of voxel indices of the image as stored) checked and mapped
onto the preprocessed image's grid, where MONAI's ``AddGuidanceSignalDeepEditd`` draws them as guidance channels."""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ..io import InputError

__all__ = ["MAX_CLICKS", "ClickError", "ClicksToGuidanced", "LabelNamesd", "parse_clicks"]

# Clicks per label in one request: an annotator places a few dozen at most; the guidance signal costs a Gaussian
# filter per label, not per click, but every click is a coordinate mapping.
MAX_CLICKS = 1000


class ClickError(InputError):
    """A click that is not three whole numbers inside the image, or one for a label the model does not know."""


def _point(label: str, index: int, value: Any, spatial_shape: Sequence[int] | None) -> list[int]:
    where = f"click {index} of {label!r}"
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ClickError(f"{where}: expected [i, j, k] voxel indices, got {str(value)[:60]}")
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in value):
        raise ClickError(f"{where}: voxel indices must be whole numbers, got {str(list(value))[:60]}")
    point = [int(c) for c in value]
    if spatial_shape is not None and not all(0 <= c < n for c, n in zip(point, spatial_shape)):
        raise ClickError(f"{where}: {point} is outside the image (size {list(map(int, spatial_shape))})")
    return point


def parse_clicks(
    clicks: Mapping[str, Any], label_names: Mapping[str, int], spatial_shape: Sequence[int] | None = None
) -> dict[str, list[list[int]]]:
    """``clicks`` checked: every key a label of ``label_names``, every value a list of at most ``MAX_CLICKS``
    ``[i, j, k]`` integer voxel indices, inside ``spatial_shape`` when given.

    Args:
        clicks: label name -> clicks, as MONAI Label's DeepEdit clients send them.
        label_names: the model's labels (name -> value), background included.
        spatial_shape: the image's size along its array axes (as stored).

    Returns:
        label name -> clicks for every label of ``label_names``, in its order (no clicks: an empty list).

    Raises:
        ClickError: naming the first bad label or click.
    """
    for label in clicks:
        if label not in label_names:
            raise ClickError(f"clicks for unknown label {str(label)[:60]!r}; this model's labels: {list(label_names)}")
    parsed = {}
    for label in label_names:
        points = clicks.get(label) or []
        if not isinstance(points, (list, tuple)):
            raise ClickError(f"clicks of {label!r}: expected a list of [i, j, k], got {type(points).__name__}")
        if len(points) > MAX_CLICKS:
            raise ClickError(f"clicks of {label!r}: {len(points)} clicks, at most {MAX_CLICKS}")
        parsed[label] = [_point(label, n, p, spatial_shape) for n, p in enumerate(points)]
    return parsed


class ClicksToGuidanced:
    """Clicks given in the data under each label's name, as voxel indices of the image as loaded, into DeepEdit's
    guidance (label name -> voxel indices on the current grid), for ``AddGuidanceSignalDeepEditd``.

    The clicks are mapped through world coordinates (the loaded image's ``original_affine``, then the inverse of
    its current ``affine``), so they follow every spatial preprocessing step: orientation, spacing, cropping.
    A click that falls outside the preprocessed image (cropped away as background) is left out.

    Args:
        label_names: the model's labels (name -> value), background included, in the order of its guidance channels.
        ref_image: key of the preprocessed image (a ``MetaTensor`` with its loading metadata).
        guidance: key of the guidance to write.

    Raises:
        ClickError: a click that is not three integers inside the loaded image, or clicks under a key that is
            not a label (only the labels' own keys are read).
    """

    def __init__(self, label_names: Mapping[str, int], ref_image: str = "image", guidance: str = "guidance"):
        self.label_names = dict(label_names)
        self.ref_image = ref_image
        self.guidance = guidance

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.ref_image]
        meta = image.meta
        original_shape = [int(n) for n in meta["spatial_shape"]]
        clicks = parse_clicks({k: d[k] for k in self.label_names if k in d}, self.label_names, original_shape)
        to_current = np.linalg.inv(_array(image.affine)) @ _array(meta.get("original_affine", image.affine))
        shape = image.shape[1:]
        guidance = {}
        for label, points in clicks.items():
            mapped = []
            for point in points:
                voxel = np.rint((to_current @ np.array([*point, 1.0]))[:3]).astype(int)
                if all(0 <= c < n for c, n in zip(voxel, shape)):
                    mapped.append(voxel.tolist())
            guidance[label] = mapped
        d[self.guidance] = guidance
        return d


class LabelNamesd:
    """Puts the model's label names in the data (``"label_names"``), where MONAI's DeepEdit transforms read them.

    Args:
        label_names: name -> value in the label maps, background included.
        key: where to put them.
    """

    def __init__(self, label_names: Mapping[str, int], key: str = "label_names"):
        self.label_names = dict(label_names)
        self.key = key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return {**data, self.key: dict(self.label_names)}


def _array(affine: Any) -> np.ndarray:
    return np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
