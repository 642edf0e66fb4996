"""The OHIF viewer that MONAI Label bundles, served by this app at ``/ohif/`` and working against a DICOMweb PACS.

MONAI Label 0.8.5 serves the viewer and a DICOMweb proxy for it, but three things stop its viewer from working:

- the proxy (``/proxy/dicom/...``) drops the request's ``Accept`` header and query string. OHIF asks for image
  frames in any transfer syntax (``transfer-syntax=*``) and decodes JPEG 2000 itself; without the header the PACS
  must answer in uncompressed form, which Orthanc cannot make from JPEG 2000 without its GDCM plugin (HTTP 500), so
  every image stays grey. Without the query string, QIDO searches lose their filters. It also runs blocking on
  the event loop, one request at a time;
- the MONAI Label panel connects to the server named by the cookie ``MONAILABEL_SERVER_URL``, and without one to
  port 8000 of the page's host, not to the server that served the page;
- files in sub-folders of the build (``assets/``, ``dicom-microscopy-viewer/``) are answered with ``index.html``.

``router`` serves both routes in their place (``lib.endpoints.install`` puts it first): the viewer's files (the page sets the cookie to this
server's own address, so the panel connects to the server that served it) and a proxy to a ``PacsProxy`` that
forwards ``Accept``, ``Content-Type`` and the query string, with a timeout, off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import monailabel.endpoints
import requests
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.utils.others.generic import get_mime_type
from starlette.concurrency import run_in_threadpool

__all__ = ["OHIF_DIR", "SERVER_COOKIE", "PacsProxy", "router"]

OHIF_DIR = Path(monailabel.endpoints.__file__).resolve().parent / "static" / "ohif"
SERVER_COOKIE = "MONAILABEL_SERVER_URL"  # read by the panel's settings (plugins/ohifv3, SettingsTable)
REQUEST_HEADERS = ("accept", "content-type")
RESPONSE_HEADERS = ("content-type", "content-location")

router = APIRouter(include_in_schema=False)


def viewer_file(path: str, root: Path = OHIF_DIR) -> Path | None:
    """The file of the viewer's build at ``path`` (sub-folders included), or None: no such file, or a path that
    leaves ``root``."""
    file = (root / path).resolve()
    return file if file.is_file() and file.is_relative_to(root.resolve()) else None


def server_cookie(base_url: str) -> str:
    """A ``Set-Cookie`` value naming ``base_url`` as the panel's server, for every page under /ohif.

    The panel reads the cookie with JavaScript's ``unescape``, so the URL is percent-encoded (``escape``'s safe
    characters kept). Its path is the one the panel itself writes the cookie under (the folder of
    /ohif/monai-label), so the two never coexist; a server URL typed in the panel lasts until the page is reloaded.
    """
    return f"{SERVER_COOKIE}={quote(base_url, safe='/@*_+-.')}; Path=/ohif; SameSite=Lax"


@router.get("/ohif/{path:path}")
def api_viewer(request: Request, path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    """A file of the viewer's build, or its page (``index.html``) for the viewer's own routes (``/ohif/``,
    ``/ohif/monai-label?StudyInstanceUIDs=...``); 404 for a missing file (a path whose last part has a suffix)."""
    file = viewer_file(path)
    if file is not None:
        return FileResponse(file, media_type=get_mime_type(str(file)))
    if Path(path).suffix:
        raise HTTPException(status_code=404, detail=f"the viewer has no file {path!r}")
    page = FileResponse(OHIF_DIR / "index.html", media_type="text/html")
    page.headers["Set-Cookie"] = server_cookie(str(request.base_url))
    page.headers["Cache-Control"] = "no-cache"
    return page


@dataclass(frozen=True)
class PacsProxy:
    """Where the proxy sends the viewer's DICOMweb requests.

    Args:
        studies: the DICOMweb root of the PACS (the server's ``--studies``); anything else (a folder) makes every
            proxy request a 404.
        prefixes: a path prefix per service (``wado``, ``qido``, ``stow``), as MONAI Label's settings give them.
        auth: user name and password for the PACS, or None.
        timeout: seconds to wait for the PACS.
    """

    studies: str
    prefixes: dict[str, str | None] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, studies: str) -> "PacsProxy":
        """The proxy MONAI Label's settings describe (prefixes, credentials, timeout), to ``studies``."""
        user, password = settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
        return cls(
            studies=studies,
            prefixes={"wado": settings.MONAI_LABEL_WADO_PREFIX, "qido": settings.MONAI_LABEL_QIDO_PREFIX,
                      "stow": settings.MONAI_LABEL_STOW_PREFIX},
            auth=(user, password) if user and password else None,
            timeout=settings.MONAI_LABEL_DICOMWEB_PROXY_TIMEOUT,
        )

    def url(self, path: str) -> str:
        """The PACS URL for the proxy path ``path`` (``wado/...``, ``qido/...``, ``stow/...`` or a bare DICOMweb
        path), with that service's prefix."""
        if not self.studies.startswith(("http://", "https://")):
            raise HTTPException(status_code=404, detail="this server's studies are not on a DICOMweb server")
        parts = path.split("/")
        if any(part in (".", "..") for part in parts):
            raise HTTPException(status_code=400, detail=f"proxy path {path!r} has a '.' or '..' segment")
        service, rest = (parts[0], "/".join(parts[1:])) if parts[0] in ("wado", "qido", "stow") else ("", path)
        if service == "qido" and rest.endswith("metadata"):  # some OHIF versions ask QIDO for metadata (WADO's)
            service = "wado"
        prefix = (self.prefixes.get(service) or "").strip("/")
        return "/".join(filter(None, (self.studies.rstrip("/"), prefix, rest)))

    def forward(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes | None) -> Response:
        """One request to the PACS and its answer (status, body, content type); 502/504 naming the PACS when it
        cannot be reached."""
        url = self.url(path)
        target = f"{url}?{query}" if query else url
        try:
            answer = requests.request(method, target, headers=headers, data=body, auth=self.auth, timeout=self.timeout)
        except requests.Timeout:
            raise HTTPException(status_code=504, detail=f"the PACS did not answer {method} {url} in time")
        except requests.ConnectionError as error:
            raise HTTPException(status_code=502, detail=f"cannot reach the PACS for {method} {url}: {error}")
        kept = {name: answer.headers[name] for name in RESPONSE_HEADERS if name in answer.headers}
        return Response(content=answer.content, status_code=answer.status_code, headers=kept)


@router.api_route("/proxy/dicom/{path:path}", methods=["GET", "POST"])
async def api_proxy(request: Request, path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    """The viewer's DICOMweb requests (QIDO, WADO, STOW), passed to the PACS with their query string and their
    ``Accept`` and ``Content-Type`` headers."""
    proxy: PacsProxy = request.app.state.pacs_proxy
    headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
    body = await request.body() if request.method == "POST" else None
    return await run_in_threadpool(proxy.forward, request.method, path, request.url.query, headers, body)

