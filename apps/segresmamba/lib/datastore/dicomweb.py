"""MONAI Label's DICOMweb datastore (a PACS such as Orthanc), offline and with checked labels."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import LoadImage
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

from custom_nets.io.dicom_seg import write_dicom_seg
from custom_nets.io.header import MAX_VOXELS
from custom_nets.io.inputs import find_inputs
from lib.datastore.local import CheckedLocalDatastore

logger = logging.getLogger(__name__)


class OriginalSyntaxClient(DICOMwebClientX):
    """Retrieves series in the transfer syntax they were stored in. Without that, a PACS that cannot transcode (Orthanc
    without its GDCM plugin, for a JPEG 2000 series) answers the default request, for uncompressed data, with 500."""

    def retrieve_series(self, study_instance_uid, series_instance_uid, media_types=None, additional_params=None):
        media_types = media_types or (("application/dicom", "*"),)
        return super().retrieve_series(study_instance_uid, series_instance_uid, media_types, additional_params)


class CheckedDICOMWebDatastore(DICOMWebDatastore, CheckedLocalDatastore):
    """Series of a DICOMweb server, cached locally as NIfTI; a final label goes back to the server as a DICOM SEG
    that references its series, and stays in the cache for training.

    Unlike the stock datastore it needs no dcmqi binaries (they would be downloaded at start): the SEG is written
    with highdicom, the way this project's predict CLI writes its DICOM SEG output. Labels are checked against
    their image's grid before anything is sent.
    """

    @classmethod
    def for_url(cls, url: str, max_voxels: int = MAX_VOXELS) -> "CheckedDICOMWebDatastore":
        client = OriginalSyntaxClient(
            url=url,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        store = cls(
            client=client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            cache_path=settings.MONAI_LABEL_DICOMWEB_CACHE_PATH.strip() or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=True,
        )
        store.max_voxels = max_voxels  # DICOMWebDatastore's constructor does not pass it on
        return store

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        self.check_label(image_id, label_filename, label_tag)  # fetches the series into the cache if needed
        label_info = dict(label_info or {})
        if label_tag == DefaultLabelTag.FINAL.value:
            label_info["SeriesInstanceUID"] = self._send_as_dicom_seg(image_id, label_filename, label_info)
        return self.store_label(image_id, label_filename, label_tag, label_info)

    def _send_as_dicom_seg(self, image_id: str, label_filename: str, label_info: dict[str, Any]) -> str:
        series = find_inputs(Path(self._datastore.image_path(), image_id))[0]
        mask = LoadImage(image_only=True)(label_filename)
        names = {str(int(v)): f"label {int(v)}" for v in np.unique(np.asarray(mask)) if v}
        names.update({str(entry["idx"]): entry["name"] for entry in label_info.get("label_info", []) if "idx" in entry})
        with tempfile.TemporaryDirectory() as folder:
            seg = write_dicom_seg(
                np.asarray(mask)[None].astype(np.uint8), np.asarray(mask.affine), series, Path(folder, "seg.dcm"),
                channel_def={"0": "background", **names}, algorithm_name="MONAI Label annotation (SegResMamba app)",
            )
            return dicom_web_upload_dcm(str(seg), self._client)
