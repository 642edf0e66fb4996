"""Image input and output for prediction: finding and checking input images (NIfTI, NRRD, MetaImage, DICOM
series, cases of one file per channel), and writing masks (NIfTI, DICOM SEG) atomically, lined up with their
images in world coordinates, with their probabilities, statistics and previews."""

from .atomic import atomic_output
from .cases import ChannelFilesCase, find_channel_cases, read_case_header
from .dicom_seg import segments_of, write_dicom_seg
from .errors import InputError
from .header import ImageHeader, read_dicom_headers, read_header
from .inputs import IMAGE_SUFFIXES, ImageInput, find_inputs, is_dicom_file
from .nifti import write_nifti_mask, write_nifti_probabilities
from .preview import overlay_slices, to_ras, write_png
from .statistics import mask_statistics, write_statistics

__all__ = [
    "ChannelFilesCase",
    "find_channel_cases",
    "mask_statistics",
    "overlay_slices",
    "read_case_header",
    "to_ras",
    "write_nifti_probabilities",
    "write_png",
    "write_statistics",
    "IMAGE_SUFFIXES",
    "ImageHeader",
    "ImageInput",
    "InputError",
    "atomic_output",
    "find_inputs",
    "is_dicom_file",
    "read_dicom_headers",
    "read_header",
    "segments_of",
    "write_dicom_seg",
    "write_nifti_mask",
]
