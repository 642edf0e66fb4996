"""What an image is (size and channels) from its header alone, so that bad inputs are refused before any work.

The rules follow MONAI's readers, which load the image later (NIfTI: nibabel, last axis of a 4D image is the
channel axis; NRRD and MetaImage: ITK, pixel components are channels; DICOM: ITK's series reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .inputs import ImageInput

__all__ = ["DEFLATE_MAX_RATIO", "MAX_VOXELS", "ImageHeader", "check_size", "read_header", "read_dicom_headers"]

# The largest image read by default: 2^28 voxels (times channels), a 512 x 512 x 1024 CT; about 1 GiB as float32
# before any preprocessing copy. Commands and the label app take another limit as an argument.
MAX_VOXELS = 512 * 512 * 1024
# Deflate (gzip, NRRD's and MetaImage's compression) shrinks data at most about 1032 times (a run of zeros): a
# compressed file smaller than its header's voxel bytes / 1032 cannot hold them.
DEFLATE_MAX_RATIO = 1032


@dataclass(frozen=True)
class ImageHeader:
    """Size of an image as MONAI will load it.

    Attributes:
        spatial_shape: voxels along the image's array axes, e.g. ``(x, y, z)``.
        num_channels: image channels (modalities, or colour components).
        voxel_bytes: bytes an uncompressed file must hold for the voxels the header announces (all channels; NIfTI:
            from the start of the file, its header included), when known.
        data_file: the file holding the voxel data, when it is one file (NIfTI, NRRD, MetaImage).
        compressed: whether that data is gzip / deflate compressed; None when unknown.
        floating: whether voxels are floating point (they may hold NaN or Inf); None when unknown.
    """

    spatial_shape: tuple[int, ...]
    num_channels: int
    # how the voxels are stored, not what the image is: left out of comparisons
    voxel_bytes: int | None = field(default=None, compare=False)
    data_file: Path | None = field(default=None, compare=False)
    compressed: bool | None = field(default=None, compare=False)
    floating: bool | None = field(default=None, compare=False)

    @property
    def voxels(self) -> int:
        """Voxels of all channels."""
        count = self.num_channels
        for n in self.spatial_shape:
            count *= n
        return count


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _nifti_header(path: Path) -> ImageHeader:
    import nibabel as nib

    try:
        image = nib.load(path)
        shape = tuple(int(s) for s in image.shape)
        dtype = image.header.get_data_dtype()
        offset = int(getattr(image.dataobj, "offset", 0))  # the header field may read 0
    except Exception as e:  # nibabel raises many kinds for a damaged file
        raise InputError(f"cannot read NIfTI {path}: {_first_line(e)}") from None
    size = dict(
        voxel_bytes=offset + dtype.itemsize * _product(shape),  # the data follows the header in a .nii
        data_file=path,
        compressed=path.name.lower().endswith(".gz"),
        floating=dtype.kind in "fc",
    )
    if len(shape) == 3:
        return ImageHeader(shape, 1, **size)
    if len(shape) == 4:
        return ImageHeader(shape[:3], shape[3], **size)
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
    channels = int(image_io.GetNumberOfComponents())
    component = itk.ImageIOBase.GetComponentTypeAsString(image_io.GetComponentType())
    # A detached header (.nhdr, .mhd) names its data file elsewhere: only the voxel limit applies to it.
    attached = path.name.lower().endswith((".nrrd", ".mha"))
    return ImageHeader(
        shape,
        channels,
        voxel_bytes=int(image_io.GetComponentSize()) * channels * _product(shape),
        data_file=path if attached else None,
        compressed=None,  # the header may say either; a raw file is bounded more tightly by the same check
        floating=component in ("float", "double"),
    )


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
    # Series readers take integer pixel data (PixelData) times RescaleSlope plus RescaleIntercept: always finite.
    return ImageHeader((int(first.Columns), int(first.Rows), depth), channels, floating=False)


def _product(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def check_size(image: ImageInput, header: ImageHeader, max_voxels: int = MAX_VOXELS) -> None:
    """Refuse an image before its voxels are read when its header announces more voxels than ``max_voxels``, or
    more voxel bytes than its file can hold (an uncompressed NIfTI smaller than its header's data; a compressed one
    smaller than that data / ``DEFLATE_MAX_RATIO``): a few bytes claiming 1024^3 voxels would otherwise cost
    gigabytes of memory before any reader noticed.

    Raises:
        InputError: the image is too large or its file too small for its header (one line, naming the path).
    """
    if header.voxels > max_voxels:
        shape = " x ".join(map(str, header.spatial_shape))
        channels = f" x {header.num_channels} channels" if header.num_channels > 1 else ""
        raise InputError(
            f"{image.path} is too large: {shape}{channels} = {header.voxels:,} voxels, the limit is {max_voxels:,} "
            "(max_voxels)"
        )
    if header.voxel_bytes is None or header.data_file is None:
        return
    file_bytes = header.data_file.stat().st_size
    if header.compressed is False and file_bytes < header.voxel_bytes:
        raise InputError(
            f"{image.path} is truncated: its header announces {header.voxel_bytes:,} bytes, the file has {file_bytes:,}"
        )
    if file_bytes * DEFLATE_MAX_RATIO < header.voxel_bytes:
        raise InputError(
            f"{image.path} is damaged: its header announces {header.voxel_bytes:,} bytes of voxels, more than a "
            f"{file_bytes:,}-byte file can hold even compressed"
        )


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
