"""Per-label voxel counts and volumes of a mask, written as JSON beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_output

__all__ = ["mask_statistics", "write_statistics"]


def mask_statistics(mask: np.ndarray, affine: np.ndarray, names: dict[str, int]) -> dict:
    """Voxel count and volume (ml) of each named label of a mask.

    Args:
        mask: ``(C, X, Y, Z)``: a label map when ``C == 1`` (``names`` maps label name -> value), else one binary
            mask per channel (``names`` maps name -> channel index).
        affine: 4x4 voxel-to-world affine in millimetres: a voxel's volume is its determinant.
        names: what to count, by name (background left out by the caller).

    Returns:
        ``{"voxel_volume_ml": v, "labels": {name: {"value" or "channel": k, "voxels": n, "volume_ml": n * v}}}``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 4:
        raise ValueError(f"mask must be (C, X, Y, Z), got shape {mask.shape}")
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    labels = {}
    for name, index in names.items():
        if mask.shape[0] == 1:
            count, key = int(np.count_nonzero(mask[0] == index)), "value"
        else:
            count, key = int(np.count_nonzero(mask[index])), "channel"
        labels[name] = {key: int(index), "voxels": count, "volume_ml": count * voxel_ml}
    return {"voxel_volume_ml": voxel_ml, "labels": labels}


def write_statistics(statistics: dict, path: str | Path) -> Path:
    """Write ``statistics`` (plain JSON values) to ``path`` atomically."""
    path = Path(path)
    with atomic_output(path, suffix=".json") as temporary:
        temporary.write_text(json.dumps(statistics, indent=2) + "\n")
    return path
