"""What an image is (size and channels) from its header alone, so that bad inputs are refused before any work.

The rules follow MONAI's readers, which load the image later (NIfTI: nibabel, last axis of a 4D image is the
channel axis; NRRD and MetaImage: ITK, pixel components are channels; DICOM: ITK's series reader).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .inputs import ImageInput

__all__ = ["ImageHeader", "read_header", "read_dicom_headers"]


@dataclass(frozen=True)
class ImageHeader:
    """Size of an image as MONAI will load it.

    Attributes:
        spatial_shape: voxels along the image's array axes, e.g. ``(x, y, z)``.
        num_channels: image channels (modalities, or colour components).
    """

    spatial_shape: tuple[int, ...]
    num_channels: int


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _nifti_header(path: Path) -> ImageHeader:
    import nibabel as nib

    try:
        shape = tuple(int(s) for s in nib.load(path).shape)
    except Exception as e:  # nibabel raises many kinds for a damaged file
        raise InputError(f"cannot read NIfTI {path}: {_first_line(e)}") from None
    if len(shape) == 3:
        return ImageHeader(shape, 1)
    if len(shape) == 4:
        return ImageHeader(shape[:3], shape[3])
    raise InputError(f"{path} has {len(shape)} dimensions {shape}: expected a 3D image (x, y, z[, channels])")


def _itk_header(path: Path, format_name: str) -> ImageHeader:
    import itk

    image_io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if image_io is None:
        raise InputError(f"cannot read {format_name} {path}: not a valid {format_name} file")
    image_io.SetFileName(str(path))
    try:
        image_io.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"cannot read {format_name} {path}: {_first_line(e).split(': ')[-1]}") from None
    shape = tuple(int(image_io.GetDimensions(i)) for i in range(image_io.GetNumberOfDimensions()))
    if len(shape) != 3:
        raise InputError(f"{path} has {len(shape)} dimensions {shape}: expected a 3D image")
    return ImageHeader(shape, int(image_io.GetNumberOfComponents()))


def read_dicom_headers(image: ImageInput) -> list:
    """The headers (``pydicom.Dataset`` without pixel data) of the image files of a DICOM series, in file order.

    Raises:
        InputError: a file is not readable DICOM, the folder holds no image or several series, or slice sizes
            differ.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for file in image.dicom_files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            raise InputError(f"not a readable DICOM file: {file}: {_first_line(e)}") from None
        if len(header) == 0:  # pydicom reads a file cut off after its meta header without complaint
            raise InputError(f"not a readable DICOM file: {file}: no data elements after the file meta header")
        if "Rows" in header and "Columns" in header:  # an image, not a report or presentation state
            headers.append(header)
    if not headers:
        raise InputError(f"no DICOM image in {image.path} (its DICOM files hold no pixel data)")
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers} - {""}
    if len(series) > 1:
        raise InputError(f"{image.path} holds {len(series)} DICOM series: give a folder with one series")
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise InputError(f"DICOM slices in {image.path} differ in size (rows x columns {sorted(sizes)})")
    return headers


def _check_slice_spacing(headers: list, folder: Path) -> None:
    """Refuse slices that are not evenly spaced along their normal: a series reader stacks them as if they were,
    which would shift every mask slice after a gap."""
    import numpy as np

    if len(headers) < 3 or not all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers):
        return
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(np.sort([float(np.dot(normal, h.ImagePositionPatient)) for h in headers]))
    median = float(np.median(steps))
    if median <= 0 or np.abs(steps - median).max() > 0.01 * median + 1e-3:
        raise InputError(
            f"DICOM slices in {folder} are not evenly spaced (steps {steps.min():.3g} to {steps.max():.3g} mm): "
            "a slice is missing or duplicated"
        )


def _dicom_header(image: ImageInput) -> ImageHeader:
    headers = read_dicom_headers(image)
    first = headers[0]
    frames = [int(h.get("NumberOfFrames", 1) or 1) for h in headers]
    if len(headers) > 1 and max(frames) > 1:
        raise InputError(f"{image.path} mixes multi-frame DICOM files: give one multi-frame file's folder alone")
    _check_slice_spacing(headers, image.path)
    depth = frames[0] if len(headers) == 1 else len(headers)
    channels = int(first.get("SamplesPerPixel", 1) or 1)
    return ImageHeader((int(first.Columns), int(first.Rows), depth), channels)


def read_header(image: ImageInput) -> ImageHeader:
    """Size and channels of ``image``, read from its header (DICOM: every file's header).

    Raises:
        InputError: the file is unreadable or damaged, or not a 3D image.
    """
    if image.format == "nifti":
        return _nifti_header(image.path)
    if image.format == "nrrd":
        return _itk_header(image.path, "NRRD")
    if image.format == "metaimage":
        return _itk_header(image.path, "MetaImage")
    if image.format == "dicom":
        return _dicom_header(image)
    raise ValueError(f"unknown image format {image.format!r}")
