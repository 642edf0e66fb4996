"""An unauthenticated label server on a network: annotators segment, upload, save labels and train, but nobody can
delete trained weights, images or labels (HTTP 403 naming MONAI_LABEL_AUTH_ENABLE), through this app's routes or
MONAI Label's deprecated ones; nothing changes on disk. With authentication on, only an admin deletes
(tests/test_label_app_auth.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from label_server import ROOT, LabelServer, small_bundles

pytest.importorskip("monailabel")

CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"
MODEL = "spleen_ct_segresmamba"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("delete")
    studies = root / "studies"
    studies.mkdir()
    (studies / "ct.nii.gz").write_bytes(CT.read_bytes())
    bundles = small_bundles(root / "bundles")
    (bundles / MODEL / "models").mkdir()
    (bundles / MODEL / "models" / "model.pt").write_bytes(b"weights: deleting them is refused before they are read")
    server = LabelServer(studies, {"bundles": str(bundles)}, root / "server.log").start()
    server.studies, server.weights = studies, bundles / MODEL / "models" / "model.pt"
    yield server
    server.stop()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_without_authentication_nothing_can_be_deleted(server, tmp_path):
    ct = nib.load(CT)
    label = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), label)
    saved = requests.put(f"{server.url}/datastore/label", params={"image": "ct", "tag": "final"},
                         files={"label": ("ct.nii.gz", label.read_bytes())}, timeout=60)  # fmt: skip
    assert saved.ok, saved.text  # annotators still save labels without authentication
    studies, weights = files(server.studies), server.weights.read_bytes()
    assert any(name.startswith("labels") for name in studies)

    refused = [
        requests.delete(f"{server.url}/model/{MODEL}", timeout=30),
        requests.delete(f"{server.url}/model/no_such_model", timeout=30),  # refused before the name is looked at
        requests.delete(f"{server.url}/datastore/image", params={"id": "ct"}, timeout=30),
        requests.delete(f"{server.url}/datastore/", params={"id": "ct"}, timeout=30),  # MONAI Label's deprecated route
        requests.delete(f"{server.url}/datastore/label", params={"id": "ct", "tag": "final"}, timeout=30),
    ]
    for response in refused:
        assert response.status_code == 403, (response.request.url, response.status_code, response.text[:300])
        assert "MONAI_LABEL_AUTH_ENABLE" in response.text and "is off" in response.text
    assert files(server.studies) == studies and server.weights.read_bytes() == weights
    assert not list(server.weights.parent.glob("*.deleted"))
    assert "ct" in requests.get(f"{server.url}/datastore/?output=all", timeout=30).json()["objects"]
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert MODEL in info["models"] and info["models"][MODEL]["trained"] is True
