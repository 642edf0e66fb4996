"""Checks on an image's voxel values, read a slab at a time so that memory stays flat whatever the image size."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .header import ImageHeader
from .inputs import ImageInput

__all__ = ["SLAB_VOXELS", "check_finite", "count_nonfinite"]

SLAB_VOXELS = 1 << 24  # voxels read at once (64 MiB as float32)


def count_nonfinite(image: ImageInput, header: ImageHeader, slab_voxels: int = SLAB_VOXELS) -> int:
    """How many voxels of ``image`` are NaN or infinite (0 without reading anything when its voxels are integers).

    NIfTI is read in slabs of whole slices along its third axis (about ``slab_voxels`` each, the gzip stream kept
    open so each slab continues where the last one ended); other formats are read whole, which ``check_size``
    bounds.
    """
    if header.floating is False:
        return 0
    if image.format == "nifti":
        import nibabel as nib

        proxy = nib.load(image.path, keep_file_open=True).dataobj
        plane = max(1, header.voxels // max(1, header.spatial_shape[2]))
        step = max(1, slab_voxels // plane)
        count = 0
        for start in range(0, header.spatial_shape[2], step):
            count += int(np.count_nonzero(~np.isfinite(np.asarray(proxy[:, :, start : start + step]))))
        return count
    import itk

    array = itk.array_view_from_image(itk.imread(str(image.path)))
    return int(np.count_nonzero(~np.isfinite(array))) if array.dtype.kind in "fc" else 0


def check_finite(image: ImageInput, header: ImageHeader) -> None:
    """Refuse an image holding NaN or infinite voxels: normalisation spreads them, and the model's answer for such
    an image is an empty (or meaningless) mask that looks like a result.

    Raises:
        InputError: one line naming the image and how many voxels are not finite.
    """
    bad = count_nonfinite(image, header)
    if bad:
        raise InputError(
            f"{image.path} has {bad:,} NaN or infinite voxel(s) of {header.voxels:,}: refusing to segment it (its mask "
            "would be empty or meaningless); replace them, e.g. by the background intensity, and try again"
        )
