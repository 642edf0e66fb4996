"""Refusing a series of another modality than a model's: a clear error instead of a meaningless segmentation.

A viewer opens any study of the PACS (OHIF's MONAI Label mode accepts CT and MR studies alike) and its panel runs
the chosen model on the series on screen; a CT model run on an MR series would answer with noise.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

__all__ = ["bundle_modality", "check_modality", "series_modality"]

MODALITY_TAG = "00080060"


def bundle_modality(metadata: dict[str, Any]) -> str | None:
    """The modality of a bundle's image input (``network_data_format.inputs.*.modality``), or None if unstated."""
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    return next((entry["modality"] for entry in inputs.values() if entry.get("modality")), None)


def series_modality(datastore: Any, series_uid: str) -> str | None:
    """The DICOM Modality of ``series_uid`` on the datastore's DICOMweb server (a QIDO search), or None: a local
    datastore (its image files carry no modality) or a server that does not tell."""
    client = getattr(datastore, "_client", None)
    if client is None or not hasattr(client, "search_for_series"):
        return None
    found = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid}, fields=[MODALITY_TAG])
    values = found[0].get(MODALITY_TAG, {}).get("Value", []) if found else []
    return str(values[0]) if values else None


def check_modality(model: str, metadata: dict[str, Any], datastore: Any, image_id: str) -> None:
    """Raises HTTP 422 naming both modalities when the series ``image_id`` is not of the modality ``model`` (with
    bundle ``metadata``) segments; does nothing when either is unknown."""
    expected, actual = bundle_modality(metadata), series_modality(datastore, image_id)
    if expected and actual and actual.upper() != expected.upper():
        raise HTTPException(
            status_code=422,
            detail=f"model {model!r} segments {expected} images; series {image_id} is {actual}",
        )
