"""A real Orthanc PACS on loopback, for tests: find it, run one instance per work folder, store a series in it.

Orthanc and its DICOMweb plugin come from Debian packages (``.ci/install-orthanc``). Each ``OrthancServer`` keeps
its storage, index, configuration and log in its own work folder and listens on free ports of 127.0.0.1, so tests
never touch the Debian service (ports 8042/4242) nor each other.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import NoReturn

import pydicom
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


def orthanc_binary() -> str | None:
    """Path of the ``Orthanc`` executable (on PATH, else Debian's /usr/sbin/Orthanc), or None if not installed."""
    found = shutil.which("Orthanc")
    if found:
        return found
    debian = Path("/usr/sbin/Orthanc")
    return str(debian) if debian.is_file() else None


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin library, or None. Debian links it from its plugin folder to a versioned file."""
    for folder in PLUGIN_DIRS:
        candidates = sorted(folder.glob(DICOMWEB_PLUGIN + "*"))
        if candidates:
            return str(candidates[0])  # the unversioned name sorts first when it is there
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (another process may still take them later)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """GET (or POST when ``data`` is given) ``url``; returns the status and body, error statuses included."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get_json(url: str, accept: str = "application/dicom+json"):
    """The decoded JSON answer of a GET, e.g. a DICOMweb QIDO query; raises on any status but 200."""
    status, body = http_request(url, headers={"Accept": accept})
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}: {body.decode(errors='replace')}")
    return json.loads(body)


class OrthancServer:
    """One Orthanc process with the DICOMweb plugin, its data in ``workdir``; a context manager.

    ``url`` is the REST API root (http://127.0.0.1:PORT), ``dicomweb_url`` the DICOMweb root (``url`` + /dicom-web).
    A new server on the same ``workdir`` finds what an earlier one stored.
    """

    def __init__(self, workdir, timeout: float = 30.0):
        self.workdir = Path(workdir)
        self.timeout = timeout
        self.http_port = self.dicom_port = None
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + "/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def write_config(self, plugin: str) -> Path:
        """Writes this instance's configuration (fresh ports each time), loading the DICOMweb ``plugin``; returns
        its path."""
        self.http_port, self.dicom_port = free_ports(2)
        storage = self.workdir / "storage"
        config = {
            "Name": "tests",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> "OrthancServer":
        """Starts Orthanc and waits until its REST API answers with the DICOMweb plugin loaded; raises with the log's
        tail if it does not."""
        binary, plugin = orthanc_binary(), dicomweb_plugin()
        if binary is None or plugin is None:
            raise RuntimeError("Orthanc or its DICOMweb plugin is not installed: run .ci/install-orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.write_config(plugin)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"Orthanc exited with status {self.process.returncode} while starting")
            if self.answers():
                # Orthanc starts even when a plugin fails to load, with a mere warning in its log.
                if "dicom-web" not in get_json(self.url + "/plugins", accept="application/json"):
                    self.fail("Orthanc started without its DICOMweb plugin")
                return self
            time.sleep(0.1)
        self.fail(f"Orthanc did not answer GET {self.url}/system within {self.timeout:g} s")

    def answers(self) -> bool:
        """Whether GET /system answers 200 now."""
        try:
            return http_request(self.url + "/system")[0] == 200
        except OSError:  # not listening yet
            return False

    def fail(self, message: str, lines: int = 30) -> NoReturn:
        """Stops the process and raises ``message`` with the last ``lines`` of Orthanc's log."""
        self.stop()
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        raise RuntimeError(f"{message}; the end of {self.log_path}:\n" + "\n".join(tail))

    def stop(self, timeout: float = 10.0):
        """Asks Orthanc to shut down (SIGTERM), kills it if it has not within ``timeout`` s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def series_uids(datasets) -> tuple[str, str]:
    """Study and Series Instance UIDs for files whose UIDs were blanked: derived from their SOP Instance UIDs, so
    the same files always get the same ones."""
    sop_uids = sorted(str(ds.file_meta.MediaStorageSOPInstanceUID) for ds in datasets)
    return tuple(generate_uid(entropy_srcs=[level, *sop_uids]) for level in ("study", "series"))


def fill_blank_uids(datasets):
    """Fills, in place, the UIDs that de-identification blanked and Orthanc requires: SOP Instance and Class UIDs
    from the file meta, one Study and one Series UID shared by all files."""
    study_uid, series_uid = series_uids(datasets)
    for ds in datasets:
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or study_uid
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or series_uid


def dicom_bytes(ds) -> bytes:
    """The dataset as a DICOM file, transfer syntax and pixel data as read (nothing is decoded)."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, write_like_original=True)
    return buffer.getvalue()


def store_series(url: str, dicom_dir) -> dict:
    """Stores every file of the one series in ``dicom_dir`` into the Orthanc at ``url`` (POST /instances).

    Blank UIDs are filled first (``fill_blank_uids``); storing the same files again stores into the same study.
    Raises with Orthanc's answer if it refuses a file. Returns the series' StudyInstanceUID and SeriesInstanceUID
    and the number of instances stored.
    """
    paths = sorted(p for p in Path(dicom_dir).iterdir() if p.is_file())
    datasets = [pydicom.dcmread(p) for p in paths]
    fill_blank_uids(datasets)
    uids = {(ds.StudyInstanceUID, ds.SeriesInstanceUID) for ds in datasets}
    if len(uids) != 1:
        raise ValueError(f"{dicom_dir} holds {len(uids)} series, expected one")
    for path, ds in zip(paths, datasets):
        status, body = http_request(
            url + "/instances", data=dicom_bytes(ds), headers={"Content-Type": "application/dicom"}
        )
        if status != 200:
            raise RuntimeError(f"Orthanc refused {path.name} ({status}): {body.decode(errors='replace')}")
    study_uid, series_uid = map(str, uids.pop())
    return {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "instances": len(datasets)}
