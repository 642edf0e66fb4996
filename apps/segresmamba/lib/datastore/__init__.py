from .checks import check_image, checked_id, read_geometry
from .dicomweb import CheckedDICOMWebDatastore
from .local import CheckedLocalDatastore

__all__ = ["CheckedDICOMWebDatastore", "CheckedLocalDatastore", "check_image", "checked_id", "read_geometry"]
