"""The app refuses to run a model on a series of another modality (apps/segresmamba/lib/modality.py)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT
from label_server import APP

pytest.importorskip("fastapi")
sys.path.insert(0, str(APP))
from fastapi import HTTPException  # noqa: E402

from lib.modality import bundle_modality, check_modality, series_modality  # noqa: E402


class Client:
    """A DICOMweb client's QIDO series search, answering from ``modalities`` (series UID -> Modality)."""

    def __init__(self, modalities: dict[str, str]):
        self.modalities = modalities

    def search_for_series(self, search_filters, fields):
        uid = search_filters["SeriesInstanceUID"]
        return [{"00080060": {"vr": "CS", "Value": [self.modalities[uid]]}}] if uid in self.modalities else []


class DicomwebStore:
    def __init__(self, modalities: dict[str, str]):
        self._client = Client(modalities)


def metadata(bundle: str) -> dict:
    return json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())


def test_bundles_state_their_modality():
    assert bundle_modality(metadata("spleen_ct_segresmamba")) == "CT"
    assert bundle_modality(metadata("brats21_mri_segresmamba")) == "MR"
    assert bundle_modality({"network_data_format": {"inputs": {"image": {}}}}) is None


def test_a_series_of_another_modality_is_refused_naming_both():
    store = DicomwebStore({"1.2.3": "MR", "1.2.4": "CT"})
    with pytest.raises(HTTPException) as refused:
        check_modality("spleen_ct_segresmamba", metadata("spleen_ct_segresmamba"), store, "1.2.3")
    assert refused.value.status_code == 422
    assert refused.value.detail == "model 'spleen_ct_segresmamba' segments CT images; series 1.2.3 is MR"
    check_modality("spleen_ct_segresmamba", metadata("spleen_ct_segresmamba"), store, "1.2.4")


def test_unknown_modalities_are_let_through():
    spleen = metadata("spleen_ct_segresmamba")
    check_modality("spleen_ct_segresmamba", spleen, object(), "image_1")  # a local datastore: no modality known
    check_modality("spleen_ct_segresmamba", spleen, DicomwebStore({}), "1.2.5")  # the server does not tell
    assert series_modality(DicomwebStore({}), "1.2.5") is None
