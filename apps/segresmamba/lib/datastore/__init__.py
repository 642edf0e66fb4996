from .checks import checked_id, read_geometry
from .dicomweb import CheckedDICOMWebDatastore
from .local import CheckedLocalDatastore

__all__ = ["CheckedDICOMWebDatastore", "CheckedLocalDatastore", "checked_id", "read_geometry"]
