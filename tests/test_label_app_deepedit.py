"""Click-guided (DeepEdit) models in the MONAI Label app, driven through MONAILabelClient as 3D Slicer's point tools
drive them, against a real server on 127.0.0.1.

The server serves the click-guided spleen bundle (narrowed to 6 mm so that a training run takes seconds), the
multi-organ one (listed, not run), and ``spleen_click_echo``: the spleen bundle with a stand-in network whose spleen
logit is a fixed function of the click guidance (``deepedit_echo.ClickEcho``). With it the tests see exactly where a
click lands in the answer on the image's grid, after the app's parsing, the bundle's preprocessing (orientation,
spacing, cropping), MONAI's guidance signal and the inversion back to the image.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from label_server import ROOT, LabelServer

pytest.importorskip("monailabel")
from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402

from custom_nets.interactive import next_click  # noqa: E402

CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct.nii.gz"
SEG = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_seg_total_v1.nii.gz"
SPLEEN = "spleen_ct_segresmamba_deepedit_fast"
ORGANS = "btcv_ct_segresmamba_deepedit_fast"
ECHO = "spleen_click_echo"
NIFTI = {"result_extension": ".nii.gz", "result_dtype": "uint8"}
SMALL = {"pixdim": [6.0, 6.0, 6.0], "num_workers": 0, "sw_batch_size": 1}


def _narrowed_copy(name: str, folder: Path, target: str | None = None) -> Path:
    bundle = folder / (target or name)
    shutil.copytree(ROOT / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    for file, extra in (("inference.json", {}), ("train.json", {"num_samples": 1, "cache_rate": 1.0})):
        path = bundle / "configs" / file
        config = json.loads(path.read_text())
        config.update(SMALL, **extra)
        path.write_text(json.dumps(config, indent=4))
    return bundle


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_app_deepedit")
    studies, bundles = root / "studies", root / "bundles"
    studies.mkdir()
    _narrowed_copy(SPLEEN, bundles)
    _narrowed_copy(ORGANS, bundles)
    echo = _narrowed_copy(SPLEEN, bundles, ECHO)
    inference = echo / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    config["network_def"] = {"_target_": "deepedit_echo.ClickEcho", "in_channels": 3, "out_channels": 2}
    inference.write_text(json.dumps(config, indent=4))
    (echo / "models").mkdir()
    torch.save({"scale": torch.tensor(4.0)}, echo / "models" / "model.pt")
    # the stand-in network's module lives beside the tests
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    server = LabelServer(studies, {"bundles": str(bundles)}, root / "server.log", env=env).start()
    (root / "client").mkdir()
    client = MONAILabelClient(server.url, tmpdir=str(root / "client"))
    client.upload_image(str(CT), image_id="ct")
    yield {"root": root, "bundles": bundles, "server": server, "client": client}
    server.stop()


@pytest.fixture(scope="module")
def spleen() -> np.ndarray:
    """TotalSegmentator's spleen on the CT's grid (array axes as stored: the clicks' voxel indices)."""
    return np.asarray(nib.load(SEG).dataobj).round() == 1


def infer(session, model: str, clicks: dict) -> np.ndarray:
    path, params = session["client"].infer(model, "ct", {**NIFTI, **clicks})
    try:
        mask = nib.load(path)
        np.testing.assert_allclose(mask.affine, nib.load(CT).affine, atol=1e-3)  # the image's own grid
        return np.asarray(mask.dataobj)
    finally:
        Path(path).unlink(missing_ok=True)


def expect_422(session, model: str, params: dict, *words: str) -> None:
    with pytest.raises(MONAILabelClientException) as error:
        session["client"].infer(model, "ct", {**NIFTI, **params})
    message = str(error.value)
    assert "Status: 422" in message, message
    for word in words:
        assert word in message, message


def test_info_lists_the_click_guided_models_with_their_labels(session):
    info = session["client"].info()
    models = info["models"]
    assert models[SPLEEN]["type"] == "deepedit" and models[SPLEEN]["labels"] == {"spleen": 1, "background": 0}
    organs = models[ORGANS]["labels"]
    assert models[ORGANS]["type"] == "deepedit" and len(organs) == 14
    assert organs["liver"] == 6 and organs["left adrenal gland"] == 13 and organs["background"] == 0
    assert {SPLEEN, ORGANS} <= set(info["trainers"])
    assert {"spleen", "liver", "background"} <= set(info["labels"])  # what 3D Slicer offers as segments


def test_foreground_click_adds_voxels_around_it_and_background_click_removes_them(session, spleen):
    auto = infer(session, ECHO, {})
    assert not auto.any()  # the stand-in segments nothing without clicks: what follows is the clicks' doing
    centre = np.array(next_click(np.zeros_like(spleen), spleen)[0])  # the spleen's innermost voxel
    grid = np.indices(spleen.shape).reshape(3, -1).T
    distance = np.linalg.norm(grid - centre, axis=1).reshape(spleen.shape)  # in voxels of the stored grid

    # as 3D Slicer sends them: every label the server lists, empty where that segment has no clicks
    slicer = {"label": "spleen", "liver": [], "right kidney": [], "background": []}
    added = infer(session, ECHO, {**slicer, "spleen": [centre.tolist()]}) == 1
    # the stand-in calls spleen where the click's Gaussian (sigma 3 voxels of the bundle's 6 mm grid) exceeds 1/4:
    # within 5 * 6 mm of the click, i.e. 10 voxels of this 3 mm CT: a ball of about 4200 voxels
    assert added[tuple(centre)] and 3000 < added.sum() < 5500, added.sum()
    assert distance[added].max() <= 11  # around the click, nowhere else

    beside = centre + np.array([8, 0, 0])  # 4 voxels of the 6 mm grid: the click's own voxel stays spleen
    removed = infer(session, ECHO, {**slicer, "spleen": [centre.tolist()], "background": [beside.tolist()]}) == 1
    assert not removed[tuple(beside)] and removed[tuple(centre)]
    assert removed.sum() < added.sum() and not (removed & ~added).any()


def test_bad_clicks_get_422_naming_the_problem(session, spleen):
    inside = [10, 10, 10]
    expect_422(session, ECHO, {"spleen": [[122, 10, 10]]}, "outside the image", "122")
    expect_422(session, ECHO, {"background": [[-1, 10, 10]]}, "outside the image")
    expect_422(session, ECHO, {"spleen": [[10.5, 10, 10]]}, "whole numbers")
    expect_422(session, ECHO, {"spleen": [[10, 10]]}, "expected [i, j, k]")
    expect_422(session, ECHO, {"spleen": "$__import__('os').remove('x')"}, "expected a list")
    expect_422(session, ECHO, {"spleen": [inside] * 1001}, "at most 1000")
    expect_422(session, ECHO, {"liver": [inside]}, "clicks for unknown label", "liver")  # another model's label
    expect_422(session, ECHO, {"kidney": [inside]}, "kidney", "not an option")  # nobody's label
    expect_422(session, ECHO, {"label": "liver"}, "option", "label", "not a label of this model")
    expect_422(session, SPLEEN, {"spleen": [[0, 0, 500]]}, "outside the image")  # checked before any weights
    assert session["server"].process.poll() is None


def test_training_from_a_submitted_label_then_inference_uses_the_new_weights(session, spleen, tmp_path):
    client, server = session["client"], session["server"]
    label = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(spleen.astype(np.uint8), nib.load(CT).affine), label)
    client.save_label("ct", str(label), tag="final")
    click = {"spleen": [list(next_click(np.zeros_like(spleen), spleen)[0])]}
    expect_409 = pytest.raises(MONAILabelClientException, match="Status: 409")
    with expect_409:
        client.infer(SPLEEN, "ct", {**NIFTI, **click})  # no weights yet

    # one run: that a second run's weights replace the first's in the next inference is the app's one bundle loader,
    # tested for the automatic model (test_label_app.py)
    weights = session["bundles"] / SPLEEN / "models" / "model.pt"
    client.train_start(SPLEEN, {"max_epochs": 1, "device": "cpu"})
    status = server.wait_for_training()
    assert status["status"] == "DONE", "\n".join(status.get("details", [])[-40:])
    state = torch.load(weights, weights_only=True)
    assert state["stem.weight"].shape[1] == 3  # image + spleen and background guidance
    mask = infer(session, SPLEEN, click)
    assert mask.shape == spleen.shape and set(np.unique(mask)) <= {0, 1}
