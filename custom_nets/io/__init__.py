"""Image input and output for prediction: finding and checking input images (NIfTI, NRRD, MetaImage, DICOM
series), and writing masks (NIfTI, DICOM SEG) atomically, lined up with their images in world coordinates."""

from .atomic import atomic_output
from .dicom_seg import segments_of, write_dicom_seg
from .errors import InputError
from .header import ImageHeader, read_dicom_headers, read_header
from .inputs import IMAGE_SUFFIXES, ImageInput, find_inputs, is_dicom_file
from .nifti import write_nifti_mask

__all__ = [
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
