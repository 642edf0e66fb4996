"""``PUT /model/{model}`` and ``DELETE /model/{model}``, only for an authenticated admin: weights are replaced only
with weights that load into the bundle's network, atomically, and the weights replaced or deleted are set aside,
never lost."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from monailabel.config import RBAC_ADMIN, settings
from monailabel.endpoints import model as upstream
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import file_checksum

from custom_nets.io.atomic import atomic_output
from lib.uploads import saved_upload, upload_suffix

from .auth import needs_authentication

router = APIRouter(prefix="/model", tags=["Model"])


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0] if lines else type(error).__name__)[:300]


def set_aside(weights: Path, why: str) -> Path:
    """A hard link ``<weights>.<time>.<why>`` to the current weights (MONAI Label's name for deleted ones), so that
    renaming new weights into place leaves the old ones on disk: no copy, and nothing to clean up on failure."""
    aside = weights.with_name(f"{weights.name}.{datetime.now().strftime('%Y%m%d_%H%M%S_%f')}.{why}")
    os.link(weights, aside)
    return aside


def update_model(model: str, file: UploadFile) -> dict:
    import torch

    infer = app_instance().infer_task(model)
    weights = infer.bundle.weights
    with saved_upload(file, upload_suffix(file, (".pt",), "weights")) as path:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # not a torch file, a pickle of arbitrary objects, a truncated file...
            raise HTTPException(
                status_code=422,
                detail="uploaded weights do not load with torch.load(weights_only=True) (a plain state dict is expected): "
                f"{str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__}; "
                "the weights are unchanged",
            ) from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        try:
            infer.bundle.parser("inference").get_parsed_content("network_def").load_state_dict(state, strict=True)
        except Exception as error:
            raise HTTPException(
                status_code=422,
                detail=f"uploaded weights do not fit {model}'s network_def: {_first_line(error)}; the weights are unchanged",
            ) from None
        with atomic_output(weights, suffix=".pt") as temporary:
            torch.save(state, temporary)  # the plain state dict, as the bundle's training saves it
            with open(temporary, "rb+") as f:
                os.fsync(f.fileno())
            if weights.is_file():
                set_aside(weights, "replaced")
    return {"checksum": file_checksum(str(weights)), "modified_time": int(weights.stat().st_mtime)}


@router.put("/{model}", summary=f"{RBAC_ADMIN}Upload/Update Model File (needs authentication)")
async def api_update_model(
    model: str, file: UploadFile, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))
):
    """Replace ``model``'s weights with the upload once it loads (``strict``) into the bundle's network, saved as a
    plain state dict and renamed into place, the old weights kept as ``model.pt.<time>.replaced``; HTTP 422
    otherwise, and the old weights stay. Only for an authenticated admin, 403 while authentication is off: new
    weights change every annotator's results. MONAI Label's route copies any upload over the weights file in place,
    for anyone when authentication is off."""
    needs_authentication("replacing model weights is off")
    return await run_in_threadpool(update_model, model, file)


@router.delete("/{model}", summary=f"{RBAC_ADMIN}Delete Model File (needs authentication)")
async def api_delete_model(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    """Set ``model``'s weights aside (MONAI Label renames them ``model.pt.<time>.deleted``): only for an
    authenticated admin, 403 while authentication is off. MONAI Label's route lets any annotator do it, and anyone at
    all without authentication."""
    needs_authentication("deleting model weights is off")
    weights = app_instance().infer_task(model).bundle.weights  # 404 naming the models for an unknown one
    if not weights.is_file():
        raise HTTPException(status_code=404, detail=f"model {model!r} has no trained weights to delete")
    return await run_in_threadpool(upstream.delete_model, model)
