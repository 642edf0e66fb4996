"""MONAI Label's datastore routes that take uploads or JSON, with checked input and no temporary file left; and
the dataset download, closed unless MONAI Label's authentication is on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from monailabel.config import RBAC_ANNOTATOR, settings
from monailabel.endpoints import datastore as upstream
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance

from lib.options import parse_json_params
from lib.uploads import IMAGE_UPLOAD_SUFFIXES, saved_upload, upload_suffix

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/datastore", tags=["Datastore"])


def add_image(image: str | None, params: dict, file: UploadFile, username: str) -> dict:
    suffix = upload_suffix(file, IMAGE_UPLOAD_SUFFIXES)
    image_id = image or Path(file.filename or "image").name[: -len(suffix)]
    with saved_upload(file, suffix) as path:
        image_id = app_instance().datastore().add_image(image_id, path, {**params, "user": username})
    return {"image": image_id}


def save_label(image: str, params: dict, tag: str, label: UploadFile) -> dict:
    app = app_instance()
    with saved_upload(label, upload_suffix(label, IMAGE_UPLOAD_SUFFIXES, "label")) as path:
        label_id = app.datastore().save_label(image, path, tag or DefaultLabelTag.FINAL.value, params)
    return {**(app.on_save_label(image, label_id) or {}), "image": image, "label": label_id}


@router.put("/", include_in_schema=False, deprecated=True)
@router.put("/image", summary=f"{RBAC_ANNOTATOR}Upload new Image")
async def api_add_image(
    image: Optional[str] = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    """Add an image (checked: id, file type, readable 3D image within the app's voxel limit)."""
    return await run_in_threadpool(add_image, image, parse_json_params(params), file, user.username)


@router.put("/label", summary=f"{RBAC_ANNOTATOR}Save Finished Label")
async def api_save_label(
    image: str,
    params: str = Form("{}"),
    tag: str = DefaultLabelTag.FINAL.value,
    label: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    """Save a label of a datastore image (checked: ids, readable image on the image's grid)."""
    return await run_in_threadpool(save_label, image, parse_json_params(params), tag, label)


@router.put("/image/info", summary=f"{RBAC_ANNOTATOR}Update Image Info")
async def api_put_image_info(
    image: str, info: str = Form("{}"), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
):
    parse_json_params(info, "info")
    return await run_in_threadpool(upstream.update_image_info, image, info, user.username)


@router.put("/label/info", summary=f"{RBAC_ANNOTATOR}Update Label Info")
async def api_put_label_info(
    label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
):
    parse_json_params(info, "info")
    return await run_in_threadpool(upstream.update_label_info, label, tag, info, user.username)


@router.get("/dataset", summary=f"{RBAC_ANNOTATOR}Download full dataset as ZIP archive (needs authentication)")
async def api_download_dataset(
    limit_cases: Optional[int] = None, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
):
    """Every image and label in one ZIP: only for an authenticated annotator (MONAI Label's auth on), 403 otherwise."""
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        raise HTTPException(
            status_code=403,
            detail="dataset download is off while MONAI Label's authentication is off (MONAI_LABEL_AUTH_ENABLE)",
        )
    try:
        return await run_in_threadpool(upstream.download_dataset, limit_cases)
    except AssertionError:  # MONAI Label's archive asserts that there is something to put in it
        raise HTTPException(status_code=404, detail="nothing to download: no label has been saved yet") from None
