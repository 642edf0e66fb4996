"""Writing segmentation masks as NIfTI."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_output

__all__ = ["label_dtype", "write_nifti_mask", "write_nifti_probabilities"]


def label_dtype(mask: np.ndarray) -> np.dtype:
    """The smallest unsigned integer type that holds every value of an integer-valued, non-negative ``mask``."""
    if mask.size and (mask.min() < 0 or not np.array_equal(mask, np.round(mask))):
        raise ValueError("a mask must hold non-negative whole numbers (labels)")
    top = int(mask.max()) if mask.size else 0
    return np.dtype(next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max))


def write_nifti_mask(mask: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a mask to ``path`` (``.nii.gz`` or ``.nii``) atomically.

    Args:
        mask: ``(C, X, Y, Z)``, channel first. ``C == 1``: a label map, written 3D; ``C > 1``: one binary mask per
            channel, written 4D ``(X, Y, Z, C)``.
        affine: 4x4, voxel indices -> RAS world millimetres (NIfTI's convention).
        path: the output file.

    Returns:
        ``path``.
    """
    import nibabel as nib

    mask = np.asarray(mask)
    if mask.ndim != 4:
        raise ValueError(f"mask must be (C, X, Y, Z), got shape {mask.shape}")
    data = mask[0] if mask.shape[0] == 1 else np.moveaxis(mask, 0, -1)
    image = nib.Nifti1Image(np.ascontiguousarray(data, dtype=label_dtype(data)), affine)
    image.header.set_qform(affine, code=1)  # scanner coordinates, as the input image's
    image.header.set_sform(affine, code=1)
    image.header.set_intent("label")
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    with atomic_output(path, suffix=suffix) as temporary:
        nib.save(image, temporary)
    return path


def write_nifti_probabilities(probabilities: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write probability maps to ``path`` (``.nii.gz`` or ``.nii``) atomically, as float32.

    Args:
        probabilities: ``(C, X, Y, Z)``, one map per output channel of the network, written 4D ``(X, Y, Z, C)``.
        affine: 4x4, voxel indices -> RAS world millimetres.
        path: the output file.
    """
    import nibabel as nib

    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (C, X, Y, Z), got shape {probabilities.shape}")
    image = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(probabilities, 0, -1)), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    path = Path(path)
    with atomic_output(path, suffix=".nii.gz" if path.name.endswith(".gz") else ".nii") as temporary:
        nib.save(image, temporary)
    return path
