"""The OHIF viewer MONAI Label bundles, served by the app at /ohif/, driven in headless Chromium against a real Orthanc.

The flow a user follows: open the viewer at a study of the PACS, connect the MONAI Label panel, run a SegResMamba
model on the open series, see the segmentation over the image, and store it in the PACS as a DICOM SEG. The model
is the small test copy of the spleen bundle with seeded, untrained weights: the test checks that the viewer draws
exactly the mask the server answered, not that the mask is a spleen.

Needs Debian's chromium (``.ci/install-browser``), Orthanc with its DICOMweb plugin (``.ci/install-orthanc``) and
Playwright (driving that Chromium; it downloads nothing). Screenshots are kept in ``outputs/test-artifacts/viewer``.
"""

from __future__ import annotations

import shutil
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import generate_uid

from conftest import DATA, ROOT
from label_server import LabelServer, small_bundles
from orthanc import (OrthancServer, dicom_bytes, dicomweb_plugin, fill_blank_uids, get_json, http_request,
                     orthanc_binary, store_series)

CHROMIUM = next((path for path in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if path and
                 Path(path).is_file()), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: run .ci/install-browser"),
    pytest.mark.skipif(orthanc_binary() is None or dicomweb_plugin() is None,
                       reason="needs Orthanc and its DICOMweb plugin: run .ci/install-orthanc"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")

CASE = DATA / "totalseg_ct_dicom" / "dicom"
MODEL = "spleen_ct_segresmamba"
ARTEFACTS = ROOT / "outputs" / "test-artifacts" / "viewer"
# Without these flags Chromium waits on network services this closed network never answers.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INFERENCE_TIMEOUT_MS = 420_000
# The study list shows a CT and an MR study: a modality cell reads "CT", or "CT/SEG" (or "CT\SEG", "CT,SEG") once a
# segmentation is stored in the study.
LISTS_CT_AND_MR = r"""() => {
    const cells = document.body.innerText.split(/\s*\n\s*/).flatMap(line => line.split(/[\\\/,]/));
    return cells.includes('CT') && cells.includes('MR');
}"""


def seeded_weights(bundle: Path, seed: int = 0) -> None:
    """Saves the bundle's network, initialised from ``seed``, as its ``models/model.pt`` (as its training would)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    (bundle / "models").mkdir(exist_ok=True)
    torch.save({"model": network.state_dict()}, bundle / "models" / "model.pt")


def fast_bundles(folder: Path) -> Path:
    """``small_bundles`` (8 mm voxels: the series takes a few 64 x 32 x 32 windows) with seeded weights."""
    small_bundles(folder)
    seeded_weights(folder / MODEL)
    return folder


def store_as_mr(url: str, dicom_dir: Path) -> str:
    """Stores the CT series again as an MR study of its own (new UIDs, Modality MR); returns its StudyInstanceUID."""
    datasets = [pydicom.dcmread(path) for path in sorted(dicom_dir.iterdir()) if path.is_file()]
    fill_blank_uids(datasets)
    study, series = (generate_uid(entropy_srcs=["mr", level]) for level in ("study", "series"))
    for ds in datasets:
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "MR"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["mr", ds.SOPInstanceUID])
        status, body = http_request(url + "/instances", data=dicom_bytes(ds), headers={"Content-Type": "application/dicom"})
        assert status == 200, body
    return study


def nrrd_labels(data: bytes) -> np.ndarray:
    """The voxels of an uncompressed (raw) uint8 NRRD file, as MONAI Label answers the viewer."""
    header, _, body = data.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in header.decode().splitlines()[1:] if ": " in line)
    assert fields["encoding"] == "raw" and fields["type"] in ("uint8", "unsigned char"), fields
    return np.frombuffer(body, dtype=np.uint8)


def overlay_pixels(png: bytes) -> int:
    """Pixels of a screenshot that are clearly coloured: the CT is drawn in grey (R = G = B), the spleen segment
    in a purple (157, 108, 162) blended over it."""
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] - rgb[..., 1] > 25) & (rgb[..., 2] - rgb[..., 1] > 25)).sum())


@pytest.fixture(scope="module")
def pacs_and_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer")
    with OrthancServer(folder / "orthanc") as orthanc:
        stored = store_series(orthanc.url, CASE)
        mr_study = store_as_mr(orthanc.url, CASE)
        server = LabelServer(orthanc.dicomweb_url, {"bundles": str(fast_bundles(folder / "bundles"))},
                             folder / "server.log", env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(folder / "cache")})
        server.start()
        try:
            yield orthanc, server, stored, mr_study
        finally:
            server.stop()


@pytest.fixture
def page(tmp_path):
    """A page of a fresh headless Chromium (its own profile in ``tmp_path``); its screenshots in
    ``tmp_path/screenshots`` are copied to ``ARTEFACTS`` whatever the outcome."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900},
        )
        try:
            browser_page = context.new_page()
            browser_page.shots = shots
            yield browser_page
        finally:
            context.close()
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            for shot in shots.iterdir():
                shutil.copy(shot, ARTEFACTS / shot.name)


def open_study(page, server: LabelServer, study: str) -> list:
    """Opens the viewer at ``study`` and connects its MONAI Label panel; returns the proxy's frame answers as they
    come in."""
    frames = []
    page.on("response", lambda r: frames.append(r) if "/frames/" in r.url else None)
    page.goto(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={study}")
    page.get_by_text("Confirm and Hide").click(timeout=120_000)  # the viewer's investigational-use banner
    field = page.locator("#monailabelServerURL")
    assert field.input_value() == server.url + "/"  # the server that served the page, not port 8000
    page.locator(".settingsTable button.actionButton").click()
    page.locator('button[title="Run Segmentation"]').wait_for(timeout=60_000)
    return frames


def axial_canvas(page):
    return page.locator("canvas.cornerstone-canvas").first


def test_viewer_segments_the_open_series_and_stores_a_dicom_seg(pacs_and_server, page):
    orthanc, server, stored, _ = pacs_and_server
    frames = open_study(page, server, stored["StudyInstanceUID"])

    options = page.locator(".modelSelector select.selectBox").first.locator("option").all_inner_texts()
    assert [option.strip() for option in options] == [MODEL]
    page.wait_for_function(f"() => document.querySelectorAll('canvas.cornerstone-canvas').length >= 3")
    page.wait_for_timeout(3000)
    assert len(frames) >= stored["instances"] and all(r.status == 200 for r in frames), [r.status for r in frames]
    image = np.asarray(Image.open(BytesIO(axial_canvas(page).screenshot())).convert("L"))
    assert image.std() > 20, "the axial view is blank or grey: the images were not decoded"
    before = overlay_pixels(axial_canvas(page).screenshot(path=page.shots / "1-study-open.png"))
    page.screenshot(path=page.shots / "1-viewer.png")

    with page.expect_response(lambda r: f"/infer/{MODEL}" in r.url, timeout=INFERENCE_TIMEOUT_MS) as answer:
        page.locator('button[title="Run Segmentation"]').click()
    assert answer.value.status == 200, answer.value.text()
    mask = nrrd_labels(answer.value.body())
    assert mask.size == 512 * 512 * stored["instances"] and mask.any()
    page.get_by_text("Running Segmentation - Successful").wait_for(timeout=30_000)
    page.wait_for_timeout(2000)

    drawn = page.evaluate("""() => {
        const segmentation = window.services.segmentationService.getSegmentation('1');
        const volume = window.cornerstone.cache.getVolume(segmentation.representationData.Labelmap.volumeId);
        const voxels = volume.voxelManager.getCompleteScalarDataArray();
        let labelled = 0;
        for (const v of voxels) { if (v !== 0) labelled++; }
        return {labelled: labelled, size: voxels.length};
    }""")
    assert drawn == {"labelled": int(np.count_nonzero(mask)), "size": mask.size}
    after = overlay_pixels(axial_canvas(page).screenshot(path=page.shots / "2-segmented-axial.png"))
    page.screenshot(path=page.shots / "2-segmented.png")
    assert before == 0 and after > 100, (before, after)

    # The monai-label mode shows no segmentation panel, so no button for OHIF's "Export DICOM SEG": run its command.
    with page.expect_response(lambda r: r.request.method == "POST" and "/proxy/dicom/" in r.url) as stow:
        page.evaluate("""() => { window.commandsManager.runCommand('storeSegmentation', {
            segmentationId: '1', dataSource: window.extensionManager.getActiveDataSource()[0]}); }""")
        page.locator("xpath=//*[text()='Enter the report name']/following::input[1]").fill("SegResMamba spleen")
        page.get_by_role("button", name="Save").click()
    assert stow.value.status == 200, stow.value.text()
    segs = get_json(f"{orthanc.dicomweb_url}/series?Modality=SEG&StudyInstanceUID={stored['StudyInstanceUID']}")
    assert len(segs) == 1 and segs[0]["0008103E"]["Value"] == ["SegResMamba spleen"], segs
    seg_series = segs[0]["0020000E"]["Value"][0]
    seg = get_json(f"{orthanc.dicomweb_url}/studies/{stored['StudyInstanceUID']}/series/{seg_series}/metadata")[0]
    assert seg["00081115"]["Value"][0]["0020000E"]["Value"] == [stored["SeriesInstanceUID"]]  # the segmented series


def test_viewer_says_when_a_model_does_not_fit_the_series(pacs_and_server, page):
    orthanc, server, _, mr_study = pacs_and_server
    page.goto(f"{server.url}/ohif/")  # the study list: both studies, each with its modality
    page.wait_for_function(LISTS_CT_AND_MR, timeout=120_000)
    page.screenshot(path=page.shots / "0-study-list.png")
    open_study(page, server, mr_study)
    with page.expect_response(lambda r: f"/infer/{MODEL}" in r.url, timeout=60_000) as answer:
        page.locator('button[title="Run Segmentation"]').click()
    assert answer.value.status == 422
    assert "segments CT images" in answer.value.json()["detail"] and "is MR" in answer.value.json()["detail"]
    page.get_by_text("Failed to Run Segmentation").wait_for(timeout=10_000)  # the panel's own message
    page.screenshot(path=page.shots / "3-not-ct.png")
    assert requests.get(f"{server.url}/info/", timeout=30).ok  # the server is still answering
