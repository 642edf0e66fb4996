"""tests/orthanc.py against a real Orthanc: the CT series stored, then seen through DICOMweb (QIDO), also after
a restart on the same storage."""

from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from conftest import DATA
from orthanc import OrthancServer, dicomweb_plugin, get_json, orthanc_binary, store_series

pytestmark = pytest.mark.skipif(
    orthanc_binary() is None or dicomweb_plugin() is None,
    reason="needs Orthanc and its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb): run .ci/install-orthanc",
)

DICOM = DATA / "totalseg_ct_dicom" / "dicom"

STUDY_UID, SERIES_UID, SOP_INSTANCE_UID = "0020000D", "0020000E", "00080018"


def values(answer: list, tag: str) -> list[str]:
    """The sorted values of ``tag`` in a QIDO answer, one per matched study, series or instance."""
    return sorted(item[tag]["Value"][0] for item in answer)


def check_stored(server: OrthancServer, stored: dict):
    """Through QIDO: the one study, holding the one series, holding the 20 instances named in the file meta."""
    study, series = stored["StudyInstanceUID"], stored["SeriesInstanceUID"]
    root = server.dicomweb_url
    assert values(get_json(f"{root}/studies"), STUDY_UID) == [study]
    assert values(get_json(f"{root}/studies/{study}/series"), SERIES_UID) == [series]
    instances = get_json(f"{root}/studies/{study}/series/{series}/instances")
    expected = sorted(read_file_meta_info(p).MediaStorageSOPInstanceUID for p in DICOM.iterdir())
    assert values(instances, SOP_INSTANCE_UID) == expected
    assert len(expected) == 20


def test_stored_series_is_seen_through_dicomweb(tmp_path):
    with OrthancServer(tmp_path) as server:
        assert server.dicomweb_url == server.url + "/dicom-web"
        stored = store_series(server.url, DICOM)
        assert stored["instances"] == 20
        check_stored(server, stored)


def test_restarted_server_keeps_the_series_and_storing_again_changes_nothing(tmp_path):
    with OrthancServer(tmp_path) as server:
        stored = store_series(server.url, DICOM)
    assert server.process is None  # stopped
    with OrthancServer(tmp_path) as server:
        check_stored(server, stored)
        assert store_series(server.url, DICOM) == stored  # same UIDs: the same study, no duplicates
        check_stored(server, stored)
