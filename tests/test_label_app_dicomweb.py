"""The MONAI Label app on a PACS: studies in a real Orthanc (DICOMweb) on loopback, labels back as DICOM SEG."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests
from scipy.ndimage import affine_transform

from conftest import DATA
from label_server import LabelServer, small_bundles
from orthanc import OrthancServer, dicomweb_plugin, get_json, orthanc_binary, store_series

pytestmark = pytest.mark.skipif(
    orthanc_binary() is None or dicomweb_plugin() is None,
    reason="needs Orthanc and its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb): run .ci/install-orthanc",
)
pytest.importorskip("monailabel")
from monailabel.client import MONAILabelClient  # noqa: E402

CASE = DATA / "totalseg_ct_dicom"
MODEL = "spleen_ct_segresmamba"


def resample_nearest(label: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """``label`` on ``reference``'s grid, matched in world coordinates (the shipped label's axes are not in DICOM
    read order)."""
    voxel_to_voxel = np.linalg.inv(label.affine) @ reference.affine
    return affine_transform(np.asarray(label.dataobj).round().astype(np.uint8), voxel_to_voxel,
                            output_shape=reference.shape[:3], order=0)


def test_pacs_flow_stores_labels_as_dicom_seg(tmp_path):
    with OrthancServer(tmp_path / "orthanc") as orthanc:
        stored = store_series(orthanc.url, CASE / "dicom")
        series = stored["SeriesInstanceUID"]
        server = LabelServer(orthanc.dicomweb_url, {"bundles": str(small_bundles(tmp_path / "bundles"))},
                             tmp_path / "server.log", env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path / "cache")})
        server.start()
        try:
            client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
            assert client.next_sample("first", {})["id"] == series  # how 3D Slicer gets its next image

            image_path = tmp_path / "image.nii.gz"
            image_path.write_bytes(requests.get(f"{server.url}/datastore/image", params={"image": series},
                                                timeout=300).content)
            image = nib.load(image_path)
            spleen = resample_nearest(nib.load(CASE / "example_seg_dicom_total_v2.nii.gz"), image) == 1
            assert spleen.sum() > 1000
            label_path = tmp_path / "label.nii.gz"
            nib.save(nib.Nifti1Image(spleen.astype(np.uint8), image.affine), label_path)
            client.save_label(series, str(label_path), tag="final",
                              params={"label_info": [{"name": "spleen", "idx": 1}]})

            segs = get_json(f"{orthanc.dicomweb_url}/series?Modality=SEG")
            assert len(segs) == 1, server.log_tail()
            assert segs[0]["0020000D"]["Value"][0] == stored["StudyInstanceUID"]

            client.train_start(MODEL, {"max_epochs": 1, "device": "cpu"})
            status = server.wait_for_training()
            assert status["status"] == "DONE", "\n".join(status.get("details", [])[-40:])

            mask_path, params = client.infer(MODEL, series, {"result_extension": ".nii.gz", "result_dtype": "uint8"})
            mask = nib.load(mask_path)
            assert mask.shape == image.shape[:3] and np.allclose(mask.affine, image.affine, atol=1e-3)
            assert params["label_names"] == {"spleen": 1}
        finally:
            server.stop()
