"""A PNG preview of a mask over its image: a few slices side by side, written without plotting libraries."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .atomic import atomic_output

__all__ = ["PALETTE", "overlay_slices", "to_ras", "write_png"]

# label colours (RGB), cycled for label values 1, 2, ...
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212]],
    dtype=np.float32,
)  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an 8-bit RGB image to ``path`` as PNG, atomically.

    Shapes:
        rgb: ``(height, width, 3)`` uint8.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"rgb must be (height, width, 3), got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)  # filter 0
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )
    path = Path(path)
    with atomic_output(path, suffix=".png") as temporary:
        temporary.write_bytes(png)
    return path


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` (spatial axes first) with its axes permuted and flipped to RAS order (first axis from the patient's
    left to right, second posterior to anterior, third inferior to superior), by its voxel-to-RAS ``affine``."""
    import nibabel as nib

    return nib.orientations.apply_orientation(volume, nib.orientations.io_orientation(affine))


def _slice_indices(labels: np.ndarray, count: int) -> list[int]:
    """``count`` slices along the last axis: spread over the labelled slices, or over the volume if none."""
    depth = labels.shape[-1]
    labelled = np.flatnonzero(labels.reshape(-1, depth).any(axis=0))
    span = labelled if labelled.size else np.arange(depth)
    picks = np.quantile(span, np.linspace(0, 1, count + 2)[1:-1]) if span.size > 1 else span
    return sorted({int(round(float(p))) for p in np.atleast_1d(picks)})


def overlay_slices(
    image: np.ndarray, labels: np.ndarray, count: int = 3, alpha: float = 0.5, min_height: int = 256
) -> np.ndarray:
    """Axial slices of ``image`` (grey, windowed to its 0.5-99.5 percentiles) with ``labels`` coloured over it
    (``PALETTE``), side by side. The arrays are in RAS order (``to_ras``); each slice is shown as radiologists view
    it, from the feet: anterior up, the patient's right on the left. Small images are enlarged by a whole factor
    ``s`` (each voxel an ``s x s`` block) to at least ``min_height`` pixels.

    Shapes:
        image, labels: ``(X, Y, Z)``; returns ``(s * Y, s * n * (X + 2), 3)`` uint8 for the ``n <= count`` distinct
        slices.
    """
    image, labels = np.asarray(image, dtype=np.float32), np.asarray(labels)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be the same 3D shape")
    low, high = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - low) / max(float(high - low), 1e-6), 0, 1) * 255
    tiles = []
    for z in _slice_indices(labels, count):
        rgb = np.repeat(grey[..., z, None], 3, axis=-1)
        label = labels[..., z].astype(np.int64)
        on = label > 0
        rgb[on] = (1 - alpha) * rgb[on] + alpha * PALETTE[(label[on] - 1) % len(PALETTE)]
        tile = np.flip(np.transpose(rgb, (1, 0, 2)), axis=(0, 1))  # rows: anterior up; columns: right to left
        tiles.append(np.pad(tile, ((0, 0), (1, 1), (0, 0))))
    scale = max(1, -(-min_height // image.shape[1]))
    sheet = np.concatenate(tiles, axis=1).round().astype(np.uint8)
    return np.repeat(np.repeat(sheet, scale, axis=0), scale, axis=1)
