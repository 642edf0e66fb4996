"""The app's viewer and DICOMweb proxy routes (apps/segresmamba/lib/viewer.py) without a browser: what the page
sets, which files it serves, which proxy paths it refuses, and what it forwards to a PACS."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from label_server import APP

pytest.importorskip("monailabel")
sys.path.insert(0, str(APP))
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from lib import viewer  # noqa: E402


def client(studies: str) -> TestClient:
    server = FastAPI()
    server.include_router(viewer.router)
    server.state.pacs_proxy = viewer.PacsProxy(studies)
    return TestClient(server)


class Recorder(BaseHTTPRequestHandler):
    """A stand-in PACS that answers every GET with what it received."""

    def do_GET(self):
        body = f"{self.path}|{self.headers.get('Accept')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def pacs():
    """The DICOMweb root of a ``Recorder`` on loopback."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/dicom-web"
    server.shutdown()


def test_page_points_the_panel_at_this_server():
    page = client("/data/images").get("/ohif/monai-label", params={"StudyInstanceUIDs": "1.2.3"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["set-cookie"] == "MONAILABEL_SERVER_URL=http%3A//testserver/; Path=/ohif; SameSite=Lax"


def test_files_in_sub_folders_are_served_and_missing_files_are_404():
    viewer_client = client("/data/images")
    icon = viewer_client.get("/ohif/assets/favicon.ico")
    assert icon.status_code == 200 and not icon.headers["content-type"].startswith("text/html")
    assert viewer_client.get("/ohif/assets/no-such-icon.png").status_code == 404
    assert viewer.viewer_file("../ohif.py") is None  # outside the build, although the file exists


def test_proxy_forwards_accept_and_query_and_refuses_dot_segments(pacs):
    proxy_client = client(pacs)
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    frames = proxy_client.get("/proxy/dicom/wado/studies/1/series/2/instances/3/frames/1", headers={"Accept": accept})
    assert frames.status_code == 200 and frames.text == f"/dicom-web/studies/1/series/2/instances/3/frames/1|{accept}"
    search = proxy_client.get("/proxy/dicom/qido/studies", params={"StudyInstanceUID": "1.2"})
    assert search.text.startswith("/dicom-web/studies?StudyInstanceUID=1.2|")
    assert proxy_client.get("/proxy/dicom/wado/studies/%2e%2e/%2e%2e/system").status_code == 400


def test_proxy_needs_a_dicomweb_datastore():
    answer = client("/data/images").get("/proxy/dicom/qido/studies")
    assert answer.status_code == 404 and "not on a DICOMweb server" in answer.json()["detail"]
