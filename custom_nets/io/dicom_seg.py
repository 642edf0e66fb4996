"""Writing segmentation masks as DICOM SEG objects that reference their source series (with highdicom)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_output
from .errors import InputError
from .header import read_dicom_headers
from .inputs import ImageInput

__all__ = ["segments_of", "sample_on_slices", "write_dicom_seg"]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
# A private coding scheme ("99" prefix, DICOM PS3.3 8.1) names the segments: the models' classes have no
# reviewed mapping to SNOMED codes.
PRIVATE_SCHEME = "99SEGRESMAMBA"


def segments_of(mask: np.ndarray, channel_def: Mapping[str, str] | None) -> tuple[np.ndarray, list[str]]:
    """Split a mask into segments and name them.

    Args:
        mask: ``(C, X, Y, Z)``. ``C == 1``: a label map whose value ``k`` is the class named ``channel_def[str(k)]``
            (0 is background and makes no segment); ``C > 1``: channel ``k`` is the binary mask of the class named
            ``channel_def[str(k)]``.
        channel_def: class names by label value or channel, as in a bundle's ``metadata.json``; names default to
            ``"label k"``.

    Returns:
        ``(labels, names)``: labels ``(X, Y, Z)`` uint8 with segment numbers 1..S when classes cannot overlap (a label
        map), else ``(S, X, Y, Z)`` bool; and the S segment names.
    """
    channel_def = dict(channel_def or {})
    if mask.shape[0] == 1:
        values = sorted(int(k) for k in channel_def if int(k) != 0) or sorted(set(np.unique(mask).astype(int)) - {0})
        if len(values) > 255:
            raise ValueError(f"too many segments for DICOM SEG output ({len(values)})")
        labels = np.zeros(mask.shape[1:], dtype=np.uint8)
        for number, value in enumerate(values, start=1):
            labels[mask[0] == value] = number
        return labels, [channel_def.get(str(v), f"label {v}") for v in values]
    return mask > 0, [channel_def.get(str(k), f"label {k}") for k in range(mask.shape[0])]


def _geometry(header, source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position of the first pixel's centre and the steps to the next column and row, in LPS millimetres."""
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in header]
    if missing:
        raise InputError(f"DICOM SEG output needs slice geometry: {', '.join(missing)} missing in {source}")
    position = np.asarray(header.ImagePositionPatient, dtype=float)
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(s) for s in header.PixelSpacing)
    # ImageOrientationPatient: direction of increasing column index, then of increasing row index (LPS)
    return position, orientation[:3] * column_spacing, orientation[3:] * row_spacing


def sample_on_slices(volume: np.ndarray, affine: np.ndarray, headers: list) -> np.ndarray:
    """Nearest-neighbour samples of ``volume`` at the pixel centres of DICOM slices, in world coordinates.

    Args:
        volume: ``(..., X, Y, Z)``: any leading axes, then the spatial axes that ``affine`` maps.
        affine: 4x4, voxel indices -> RAS world millimetres.
        headers: the slices' DICOM headers (``ImagePositionPatient``, ``ImageOrientationPatient``,
            ``PixelSpacing``, ``Rows``, ``Columns``).

    Returns:
        ``(len(headers), rows, columns, ...)``: per slice, the value at each pixel (leading axes of ``volume``
        last); 0 where a pixel centre lies outside the volume.
    """
    world_to_voxel = np.linalg.inv(affine)
    spatial = np.array(volume.shape[-3:])
    leading = volume.shape[:-3]
    out = np.zeros((len(headers), int(headers[0].Rows), int(headers[0].Columns), *leading), dtype=volume.dtype)
    channels_last = np.moveaxis(volume.reshape(-1, *spatial), 0, -1)  # (X, Y, Z, prod(leading))
    for i, header in enumerate(headers):
        position, column_step, row_step = _geometry(header, Path(str(header.filename)))
        rows, columns = np.meshgrid(np.arange(int(header.Rows)), np.arange(int(header.Columns)), indexing="ij")
        world = position + rows[..., None] * row_step + columns[..., None] * column_step
        voxel = (world * LPS_TO_RAS) @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
        index = np.rint(voxel).astype(np.int64)
        inside = np.all((index >= 0) & (index < spatial), axis=-1)
        picked = channels_last[index[inside, 0], index[inside, 1], index[inside, 2]]
        out[i][inside] = picked.reshape(-1, *leading)
    return out


def _referencable(headers: list, source: Path) -> list:
    """Headers with the UIDs a SEG must reference. De-identification can blank them: SOP instance and class UIDs
    then come from each file's meta header, and study and series UIDs are derived from the SOP instance UIDs
    (the same on every run), with a warning."""
    from pydicom.uid import generate_uid

    for header in headers:
        if not header.get("SOPInstanceUID"):
            header.SOPInstanceUID = header.file_meta.MediaStorageSOPInstanceUID
        if not header.get("SOPClassUID"):
            header.SOPClassUID = header.file_meta.MediaStorageSOPClassUID
    instances = sorted(str(h.SOPInstanceUID) for h in headers)
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not all(h.get(key) for h in headers):
            uid = generate_uid(entropy_srcs=[key, *instances])
            logger.warning(f"{source}: {key} is empty; the DICOM SEG references the series as {uid}")
            for header in headers:
                setattr(header, key, uid)
    return headers


def write_dicom_seg(
    mask: np.ndarray,
    affine: np.ndarray,
    source: ImageInput,
    path: str | Path,
    channel_def: Mapping[str, str] | None = None,
    algorithm_name: str = "SegResMamba",
    algorithm_version: str = "",
) -> Path:
    """Write a mask as a DICOM SEG of the series it was made from, atomically.

    The mask is sampled at every pixel centre of every source slice through world coordinates, so the SEG's
    frames line up with the source slices whatever the mask's grid.

    Args:
        mask: ``(C, X, Y, Z)`` (see ``segments_of``).
        affine: 4x4, mask voxel indices -> RAS world millimetres.
        source: the DICOM series (``format == "dicom"``) the mask was made from.
        path: the output file.
        channel_def: class names (see ``segments_of``).
        algorithm_name, algorithm_version: identify the model in the SEG.

    Returns:
        ``path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if source.format != "dicom":
        raise InputError(f"DICOM SEG output needs a DICOM series input; {source.path} is {source.format}")
    headers = read_dicom_headers(source)
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise InputError(f"DICOM SEG output supports single-frame slices; {source.path} is multi-frame")
    headers = _referencable(headers, source.path)

    labels, names = segments_of(np.asarray(mask), channel_def)
    frames = sample_on_slices(labels, affine, headers)  # (slices, rows, columns[, segments])
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version or "unknown"
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=hd.sr.CodedConcept("SEGMENT", PRIVATE_SCHEME, "Segmented structure"),
            segmented_property_type=hd.sr.CodedConcept(f"LABEL{number}", PRIVATE_SCHEME, name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(names, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(headers[0].get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="SegResMamba",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version or "unknown",
        device_serial_number="none",
        series_description=f"{algorithm_name} segmentation",
    )
    with atomic_output(path, suffix=".dcm") as temporary:
        seg.save_as(temporary)
    return Path(path)
