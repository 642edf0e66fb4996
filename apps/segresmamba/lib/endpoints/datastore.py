"""MONAI Label's datastore routes that take uploads or JSON, with checked input and no temporary file left; and
the dataset download and the removal of images and labels, closed unless MONAI Label's authentication is on
(``auth.needs_authentication``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from monailabel.config import RBAC_ADMIN, RBAC_ANNOTATOR, settings
from monailabel.endpoints import datastore as upstream
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance

from lib.datastore import checked_id
from lib.options import parse_json_params

from .auth import needs_authentication
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
    needs_authentication("dataset download is off")
    try:
        return await run_in_threadpool(upstream.download_dataset, limit_cases)
    except AssertionError:  # MONAI Label's archive asserts that there is something to put in it
        raise HTTPException(status_code=404, detail="nothing to download: no label has been saved yet") from None


def removed(remove, *args) -> dict:
    """``remove(*args)``, then the datastore's listing refreshed: a local datastore otherwise learns of the removed
    files from its file watcher, a moment later."""
    answer = remove(*args)
    app_instance().datastore().refresh()
    return answer


@router.delete("/", include_in_schema=False, deprecated=True)
@router.delete("/image", summary=f"{RBAC_ADMIN}Remove Image and its labels (needs authentication)")
async def api_remove_image(id: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    """Remove an image and every label of it: only for an authenticated admin, 403 while authentication is off."""
    needs_authentication("removing images is off")
    image_id = checked_id(id)
    if not app_instance().datastore().get_image_uri(image_id):
        raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
    return await run_in_threadpool(removed, upstream.remove_image, image_id, user.username)


@router.delete("/label", summary=f"{RBAC_ADMIN}Remove Label (needs authentication)")
async def api_remove_label(id: str, tag: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    """Remove one label of an image: only for an authenticated admin, 403 while authentication is off (annotators
    correct a label by saving a new one over it)."""
    needs_authentication("removing labels is off")
    image_id, tag = checked_id(id), checked_id(tag, "label tag")
    if not app_instance().datastore().get_label_uri(image_id, tag):
        raise HTTPException(status_code=404, detail=f"image {image_id!r} has no label {tag!r}")
    return await run_in_threadpool(removed, upstream.remove_label, image_id, tag, user.username)
