"""``POST /train/{model}`` and ``POST /train/``: MONAI Label's routes, with every option parsed before a training
process starts."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from monailabel.config import RBAC_ADMIN, settings
from monailabel.endpoints import train as upstream
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from lib.options import TRAIN_OPTIONS, parse_options

router = APIRouter(prefix="/train", tags=["Train"])


@router.post("/{model}", summary=f"{RBAC_ADMIN} Run Training Task for specific model")
async def api_run_model(
    model: str,
    params: Optional[dict] = None,
    run_sync: Optional[bool] = False,
    enqueue: Optional[bool] = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    """Train ``model`` with ``params``, each parsed into its type and range (HTTP 422 naming the option otherwise).

    MONAI Label hands the options to a training process as they came, and its bundle task passes them into the
    bundle config, where a string starting with ``$`` runs as Python. The trainer parses them again in that process.
    """
    app = app_instance()
    if model not in app.trainer_names():
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server trains {sorted(app.trainer_names())}")
    options = parse_options(params, TRAIN_OPTIONS)
    return await run_in_threadpool(upstream.run_model, model, options, run_sync, enqueue)


@router.post("/", summary=f"{RBAC_ADMIN}Run All Training Tasks", include_in_schema=False, deprecated=True)
async def api_run(
    params: Optional[dict] = None,
    run_sync: Optional[bool] = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    """Train every model, ``params`` holding each one's options under its name (parsed as for one model)."""
    app = app_instance()
    params = params or {}
    unknown = sorted(set(params) - set(app.trainer_names()))
    if unknown:
        raise HTTPException(status_code=422, detail=f"params for unknown model(s) {unknown}; models: {sorted(app.trainer_names())}")
    options = {model: parse_options(params.get(model), TRAIN_OPTIONS) for model in app.trainer_names()}
    result = {}
    for model, model_options in options.items():
        result[model] = await run_in_threadpool(upstream.run_model, model, model_options, run_sync, True)
    return result
