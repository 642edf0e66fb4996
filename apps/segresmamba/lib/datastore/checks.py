"""Checks on what clients send, answered with HTTP 4xx errors that name the problem."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException

from custom_nets.io import InputError, find_inputs, read_header
from custom_nets.io.header import MAX_VOXELS, check_size
from custom_nets.io.voxels import check_finite

# An id becomes a file name in the datastore: no path separators, no '..', nothing hidden.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def checked_id(value: str, what: str = "image id") -> str:
    """``value`` if it is a safe file-name stem, else HTTP 400."""
    if not isinstance(value, str) or not _ID.fullmatch(value) or ".." in value:
        raise HTTPException(
            status_code=400,
            detail=f"invalid {what} {value!r}: use letters, digits, '_', '-' and '.', no path characters",
        )
    return value


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image in world coordinates (ITK's LPS convention)."""

    size: tuple[int, ...]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def matches(self, other: "Geometry", tolerance: float = 1e-3) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=tolerance, atol=tolerance)
            and np.allclose(self.origin, other.origin, rtol=tolerance, atol=tolerance * float(self.spacing.max()))
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def describe(self) -> str:
        return (
            f"size {list(self.size)}, spacing {np.round(self.spacing, 4).tolist()}, "
            f"origin {np.round(self.origin, 3).tolist()}"
        )


def _read_all_voxels(path: str) -> None:
    """Read every voxel: ITK reads a truncated NIfTI or NRRD without complaint, nibabel and pynrrd raise."""
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        np.asanyarray(nib.load(path).dataobj)
    elif path.endswith(".nrrd"):
        import nrrd

        nrrd.read(path)


def check_image(path: str, what: str, max_voxels: int = MAX_VOXELS, finite: bool = False) -> None:
    """HTTP 422 unless the image at ``path`` has a readable header, at most ``max_voxels`` voxels and no more voxel
    data than its file can hold (checked before any voxel is read), and with ``finite``, no NaN or infinite voxel.
    Messages name the image as ``what``, not by its (temporary) path."""
    try:
        image = find_inputs(path)[0]
        header = read_header(image)
        check_size(image, header, max_voxels)
        if finite:
            check_finite(image, header)
    except InputError as error:
        raise HTTPException(status_code=422, detail=str(error).replace(str(path), what)) from None


def read_geometry(path: str, what: str, max_voxels: int = MAX_VOXELS) -> Geometry:
    """Read the whole image at ``path`` and return its grid; HTTP 422 if it is not a readable 3D image of at most
    ``max_voxels`` voxels (see ``check_image``)."""
    import itk

    check_image(path, what, max_voxels)
    try:
        _read_all_voxels(str(path))
        image = itk.imread(str(path))
    except Exception as error:  # unknown formats, truncated or corrupt data: many exception types
        raise HTTPException(
            status_code=422, detail=f"{what} is not a readable image (NIfTI, NRRD, ...): {str(error).splitlines()[0]}"
        ) from None
    dimension = image.GetImageDimension()
    if dimension not in (3, 4):
        raise HTTPException(status_code=422, detail=f"{what} must be a 3D volume (4D: channels last), got {dimension}D")
    # A 4D image (BraTS: four MRI sequences) is one grid with a channel per sequence: compare its 3 spatial axes.
    return Geometry(
        size=tuple(int(s) for s in itk.size(image))[:3],
        spacing=np.asarray(itk.spacing(image), dtype=float)[:3],
        origin=np.asarray(itk.origin(image), dtype=float)[:3],
        direction=np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=float)[:3, :3],
    )
