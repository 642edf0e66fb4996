"""Where the standard NoC (number of clicks) protocol clicks next: the centre of the largest error region."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["next_click"]


def next_click(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[tuple[int, int, int], bool] | None:
    """The next simulated click for one label: in the largest connected error region (missed voxels or wrongly
    added ones, 26-connected), the voxel farthest from the region's border (Euclidean distance in ``spacing`` units).

    Args:
        prediction: the label's predicted binary mask, ``(X, Y, Z)``.
        truth: its reference mask, same shape.
        spacing: voxel size along each axis (default 1).

    Returns:
        ``((i, j, k), foreground)``: the voxel and whether it is a foreground click (the region was missed) or a
        background click (the region was wrongly added); None when prediction and truth agree.
    """
    from scipy import ndimage

    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    errors = prediction ^ truth
    if not errors.any():
        return None
    regions, count = ndimage.label(errors, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel())[1:]
    largest = regions == (int(np.argmax(sizes)) + 1)
    # pad so that the image border counts as the region's border
    distance = ndimage.distance_transform_edt(np.pad(largest, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    voxel = tuple(int(c) for c in np.unravel_index(int(np.argmax(distance)), distance.shape))
    return voxel, bool(truth[voxel])
