"""MONAI Label's log routes, closed unless its authentication is on (the log holds paths, requests and errors)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends
from monailabel.config import RBAC_ADMIN, settings
from monailabel.endpoints import logs as upstream
from monailabel.endpoints.user.auth import RBAC, User

from .auth import needs_authentication

router = APIRouter(prefix="/logs", tags=["Others"])


def _closed() -> None:
    needs_authentication("server logs are off", "; read logs/app.log in the app folder on the server")


@router.get("/", summary=f"{RBAC_ADMIN}Get Logs (needs authentication)")
async def api_get_logs(
    lines: Optional[int] = 300,
    html: Optional[bool] = True,
    text: Optional[bool] = False,
    refresh: Optional[int] = 0,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    _closed()
    return await upstream.api_get_logs(lines, html, text, refresh, user)


@router.get("/gpu", summary=f"{RBAC_ADMIN}Get GPU Info (needs authentication)")
async def api_gpu_info(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    _closed()
    return await upstream.gpu_info(user)
