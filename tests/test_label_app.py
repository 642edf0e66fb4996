"""The MONAI Label app driven as 3D Slicer's plugin drives it: MONAILabelClient against a real server on 127.0.0.1.

The session's shared server (conftest.py ``shared_label_server``; start-up and training are the slow parts), under
image ids of this module; the tests run in file order, like an annotation session: upload, bad input, label, train,
infer, active learning, scoring. What an untrained model answers is checked in test_label_app_crash.py, on a
server of its own.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from label_server import ROOT

pytest.importorskip("monailabel")
from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402

CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct.nii.gz"
SEG = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_seg_total_v1.nii.gz"
MODEL = "spleen_ct_segresmamba"
NRRD_UINT8 = {"result_extension": ".nrrd", "result_dtype": "uint8"}
IMAGE = "label_app_ct"  # image ids of this module on the shared server: its name as a prefix


@pytest.fixture(scope="module")
def session(shared_label_server, tmp_path_factory):
    server = shared_label_server
    client_dir = tmp_path_factory.mktemp("label_app_client")
    client = MONAILabelClient(server.url, tmpdir=str(client_dir))
    return {"studies": Path(server.studies), "bundles": Path(server.conf["bundles"]), "server": server, "client": client}


@pytest.fixture(scope="module")
def spleen_label(tmp_path_factory) -> Path:
    """The shipped CT's spleen (TotalSegmentator's, model-made) as a uint8 mask on the CT's grid."""
    seg = nib.load(SEG)
    path = tmp_path_factory.mktemp("labels") / "ct.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(seg.dataobj).round() == 1).astype(np.uint8), seg.affine), path)
    return path


def expect_error(call, status: int, *words: str) -> str:
    with pytest.raises(MONAILabelClientException) as error:
        call()
    message = str(error.value)
    assert f"Status: {status}" in message, message
    for word in words:
        assert word in message, message
    return message


def read_mask(path: str):
    import itk

    return itk.imread(path)


def test_info_serves_the_bundles_offline(session):
    info = session["client"].info()
    assert set(info["models"]) == {MODEL} and set(info["trainers"]) == {MODEL}
    assert info["models"][MODEL]["labels"] == {"spleen": 1}
    assert not any("sam" in name for name in info["models"])  # no SAM2 (its weights would be downloaded)
    assert {"random", "first", f"tta_uncertainty_{MODEL}"} <= set(info["strategies"])
    assert {f"dice_{MODEL}", f"tta_uncertainty_{MODEL}"} <= set(info["scoring"])
    assert "Model Zoo" not in session["server"].log_tail(400)


def test_upload_image(session):
    assert session["client"].upload_image(str(CT), image_id=IMAGE) == {"image": IMAGE}
    assert (session["studies"] / f"{IMAGE}.nii.gz").read_bytes() == CT.read_bytes()


def test_bad_uploads_get_4xx_and_change_nothing(session, tmp_path):
    client = session["client"]
    before = client.datastore()
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    expect_error(lambda: client.upload_image(str(text), image_id="notes"), 415, "unsupported image file type")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(CT.read_bytes()[:5000])
    expect_error(lambda: client.upload_image(str(corrupt), image_id="corrupt"), 422, "is damaged")
    expect_error(lambda: client.upload_image(str(CT), image_id="../escape"), 400, "invalid image id")
    assert not (session["studies"].parent / "escape.nii.gz").exists()
    assert client.datastore() == before
    assert requests.get(f"{session['server'].url}/info/", timeout=30).ok


def test_infer_errors_name_the_problem(session):
    client = session["client"]
    expect_error(lambda: client.infer("no_such_model", IMAGE, NRRD_UINT8), 404, "unknown model", MODEL)
    expect_error(lambda: client.infer(MODEL, "../../etc/passwd", NRRD_UINT8), 400, "invalid image id")
    expect_error(lambda: client.infer(MODEL, "label_app_missing", NRRD_UINT8), 404, "not in the datastore")


def test_save_label_checks_its_geometry(session, spleen_label, tmp_path):
    client = session["client"]
    seg = nib.load(spleen_label)
    shifted = tmp_path / "shifted.nii.gz"
    affine = seg.affine.copy()
    affine[:3, 3] += 30.0
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), affine), shifted)
    expect_error(lambda: client.save_label(IMAGE, str(shifted), tag="final"), 422, "label geometry does not match")
    expect_error(lambda: client.save_label("label_app_unknown", str(spleen_label), tag="final"), 404,
                 "not in the datastore")
    assert client.save_label(IMAGE, str(spleen_label), tag="final")["label"] == IMAGE
    saved = session["studies"] / "labels" / "final" / f"{IMAGE}.nii.gz"
    assert saved.read_bytes() == spleen_label.read_bytes()


def infer_mask(session):
    mask_path, params = session["client"].infer(MODEL, IMAGE, NRRD_UINT8)
    assert mask_path.endswith(".nrrd") and params["label_names"] == {"spleen": 1}
    return read_mask(mask_path), params


def test_training_writes_weights_the_next_inference_uses(session):
    import itk

    client, server = session["client"], session["server"]
    weights = session["bundles"] / MODEL / "models" / "model.pt"
    before = weights.read_bytes() if weights.exists() else None  # the shared server's model may be trained already
    client.train_start(MODEL, {"max_epochs": 2, "device": "cpu"})
    status = server.wait_for_training()
    assert status["status"] == "DONE", "\n".join(status.get("details", [])[-40:])
    assert weights.read_bytes() != before
    state = torch.load(weights, weights_only=True)  # a plain state dict: loads under torch's safe default
    assert state and all(isinstance(value, torch.Tensor) for value in state.values())

    mask, params = infer_mask(session)
    ct = itk.imread(str(CT))
    assert itk.size(mask) == itk.size(ct)
    assert np.allclose(itk.spacing(mask), itk.spacing(ct)) and np.allclose(itk.origin(mask), itk.origin(ct))
    assert np.allclose(itk.array_from_matrix(mask.GetDirection()), itk.array_from_matrix(ct.GetDirection()))
    first = itk.array_from_image(mask)
    assert first.dtype == np.uint8 and set(np.unique(first)) <= {0, 1}
    assert "latencies" in params

    client.train_start(MODEL, {"max_epochs": 3, "device": "cpu"})
    assert server.wait_for_training()["status"] == "DONE"
    second = itk.array_from_image(infer_mask(session)[0])
    assert (first != second).any(), "inference did not change after training"


def test_active_learning_orders_unlabelled_images(session, tmp_path):
    client, url = session["client"], session["server"].url
    for name, shift in (("label_app_a", 0), ("label_app_b", 200)):
        ct = nib.load(CT)
        array = np.asarray(ct.dataobj).astype(np.int16)
        array = np.roll(array, shift // 10, axis=0) if shift else array
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, ct.affine), path)
        client.upload_image(str(path), image_id=name)
    assert client.next_sample("random", {})["id"] in {"label_app_a", "label_app_b"}

    answer = requests.post(f"{url}/scoring/tta_uncertainty_{MODEL}?run_sync=true", timeout=900)
    assert answer.ok, answer.text
    info = {i: client.datastore()["objects"][i]["image"]["info"]["tta_uncertainty"][MODEL]["score"]
            for i in ("label_app_a", "label_app_b")}
    assert all(0.0 <= s <= np.log(2) for s in info.values()), info
    first = client.next_sample(f"tta_uncertainty_{MODEL}", {})
    assert first["id"] == max(info, key=info.get)
    # the image just served is held back for the next annotator
    assert client.next_sample(f"tta_uncertainty_{MODEL}", {})["id"] == min(info, key=info.get)


def test_dice_scoring_against_saved_labels(session):
    url = session["server"].url
    answer = requests.post(f"{url}/scoring/dice_{MODEL}?run_sync=true", timeout=900)
    assert answer.ok, answer.text
    dice = session["client"].datastore()["objects"][IMAGE]["image"]["info"]["dice"][MODEL]
    assert 0.0 <= dice["mean"] <= 1.0 and set(dice["per_label"]) == {"spleen"}
