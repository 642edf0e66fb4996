"""This app's versions of MONAI Label's routes that take untrusted input, served in place of MONAI Label's own.

The fixes belong in MONAI Label (0.8.5): its train route hands request options to bundle configs unparsed, its infer
route reads any existing path and runs on the event loop, its upload routes leave their temporary files behind when
a check fails, its model route overwrites weights with any upload, and its token check refuses every token under
PyJWT 2 (``auth``). Until they are fixed there, ``install``
puts these routes first in the server's routing table (Starlette serves the first route that matches) and drops the
ones they replace. Tests in ``tests/test_label_app_hostile.py`` fail if the upstream behaviour comes back.
"""

from __future__ import annotations

from fastapi import FastAPI
from monailabel.config import settings
from monailabel.endpoints.user.auth import get_current_user

from lib import viewer

from . import auth, datastore, infer, logs, model, train

__all__ = ["install"]

ROUTERS = (infer.router, train.router, model.router, datastore.router, logs.router, viewer.router)


def install(server: FastAPI, pacs_proxy: viewer.PacsProxy) -> None:
    """Serve this app's routes in ``server`` before MONAI Label's: the server's router tries its routes in order and
    serves the first that matches a request's method and path, so MONAI Label's routes of the same method and path
    are never reached; its other routes (downloads, status, ...) still are. Every route checks tokens with
    ``auth.current_user``; the viewer's DICOMweb proxy sends to ``pacs_proxy``."""
    server.state.pacs_proxy = pacs_proxy
    if getattr(server.state, "segresmamba_routes", False):
        return
    routes = server.router.routes
    before = len(routes)
    for router in ROUTERS:
        server.include_router(router, prefix=settings.MONAI_LABEL_API_STR)
    ours = routes[before:]
    del routes[before:]
    routes[0:0] = ours
    getattr(server.router, "_mark_routes_changed", lambda: None)()  # FastAPI >= 0.16x caches its route tables
    server.dependency_overrides[get_current_user] = auth.current_user
    server.openapi_schema = None
    server.state.segresmamba_routes = True
