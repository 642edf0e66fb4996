"""The label app and ``segresmamba predict`` under hostile input (issue 11): no request runs code, no file outside
the datastore is read, no upload outlives its request, no header costs gigabytes, no NaN gives a silent empty mask,
inference does not freeze the server, weights are replaced only by weights that fit, and without authentication
nothing is deleted.

One server for the module (plain HTTP and MONAILabelClient on 127.0.0.1) with its own temporary folder (TMPDIR),
listed before and after each request. The command line runs through its parser in this process (its peak memory
measured from a reset of the process's peak).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from label_server import APP, ROOT, LabelServer, small_bundles

pytest.importorskip("monailabel")
from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402

CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"  # 122 x 101 x 30, int16
MODEL = "spleen_ct_segresmamba"
JSON_OUT = {"output": "json"}


# ---------------------------------------------------------------------------------------------- files


def small_weights(bundle: Path) -> dict:
    """A random state dict of the small bundle's network."""
    sys.path.insert(0, str(APP))
    from custom_nets.bundle import Bundle

    torch.manual_seed(0)
    return Bundle(bundle.name, bundle).parser("inference").get_parsed_content("network_def").state_dict()


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def header_only_nifti(path: Path, size: int) -> Path:
    """A gzipped NIfTI header claiming ``size``^3 int16 voxels, and no voxel data: a few dozen bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape((size, size, size))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    return path


def ct_with_nonfinite(path: Path, count: int = 1000) -> Path:
    """The CT as float32 with ``count`` NaN voxels (and one +Inf) inside the body."""
    ct = nib.load(CT)
    array = np.asarray(ct.dataobj).astype(np.float32)
    rng = np.random.default_rng(0)
    array.flat[rng.choice(array.size - 1, count, replace=False) + 1] = np.nan  # .flat: the array is Fortran-ordered
    array.flat[0] = np.inf
    nib.save(nib.Nifti1Image(array, ct.affine), path)
    return path


# ---------------------------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    studies, temp = root / "studies", root / "tmp"
    studies.mkdir()
    temp.mkdir()
    (studies / "ct.nii.gz").write_bytes(CT.read_bytes())
    bundles = small_bundles(root / "bundles")
    (bundles / MODEL / "models").mkdir()
    torch.save(small_weights(bundles / MODEL), bundles / MODEL / "models" / "model.pt")
    # an image in the server's working folder, named like a datastore id: MONAI Label would read it
    (root / "cwd_ct.nii.gz").write_bytes(CT.read_bytes())
    server = LabelServer(
        studies,
        {"bundles": str(bundles), "infer_workers": "1", "infer_queue": "2"},
        root / "server.log",
        env={"TMPDIR": str(temp)},
        cwd=root,
    ).start()
    server.root, server.temp, server.studies, server.bundles = root, temp, studies, bundles
    yield server
    server.stop()


@pytest.fixture
def temp_unchanged(server):
    """Asserts that the server's temporary folder holds the same entries after the test as before."""
    before = sorted(p.name for p in server.temp.iterdir())
    yield
    deadline = time.monotonic() + 5  # the response of a successful inference is removed just after it is sent
    while sorted(p.name for p in server.temp.iterdir()) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(p.name for p in server.temp.iterdir()) == before


def post_train(server, params, model=MODEL):
    return requests.post(f"{server.url}/train/{model}" if model else f"{server.url}/train/", json=params, timeout=60)


def infer(server, image: str = "", params=None, file: Path | None = None, **query):
    files = {"params": (None, params if isinstance(params, str) else json.dumps(params or {}))}
    if file is not None:
        files["file"] = (file.name, file.read_bytes())
    return requests.post(
        f"{server.url}/infer/{MODEL}", params={"image": image, **query} if image else query, files=files, timeout=300
    )


def expect(response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:500])
    for word in words:
        assert word in response.text, response.text[:500]


# ---------------------------------------------------------------------------------------------- 1. no code runs


def hostile_values(marker: Path, folder: Path) -> dict[str, str]:
    """Strings a MONAI bundle config would run (``$``), resolve (``@``) or load from another file (``%``)."""
    code = f"$__import__('pathlib').Path({str(marker)!r}).touch() or 0.003"
    macro_file = folder / "macro.json"
    macro_file.write_text(json.dumps({"x": code}))
    return {"dollar": code, "at": "@network_def", "percent": f"%{macro_file}#x"}


@pytest.mark.parametrize("form", ["dollar", "at", "percent"])
def test_train_options_cannot_run_code(server, tmp_path, form, temp_unchanged):
    marker = tmp_path / "ran"
    value = hostile_values(marker, tmp_path)[form]
    for option in ("learning_rate", "max_epochs", "num_workers", "cache_rate", "num_samples", "val_interval",
                   "val_split", "tracking_uri", "tracking", "model_filename", "run_id", "gpus", "device"):  # fmt: skip
        expect(post_train(server, {option: value}), 422, f"option '{option}'")
    expect(post_train(server, {"bundle_path": str(tmp_path)}), 422, "option 'bundle_path'")
    expect(post_train(server, {"learning_rate": 0.01, "anything_else": 1}), 422, "option 'anything_else'")
    expect(post_train(server, {MODEL: {"learning_rate": value}}, model=None), 422, "option 'learning_rate'")
    time.sleep(1)
    assert not marker.exists()
    assert requests.get(f"{server.url}/train/", timeout=30).status_code == 404  # no training task ever started


def test_trainer_parses_options_before_monai_label_builds_overrides(tmp_path):
    """MONAI Label's BundleTrainTask puts request values into the config (max_epochs, tracking, displayable configs)
    as they come: the app's trainer must refuse a hostile value before that code runs, in the training process too
    (the server's check is one route; this one holds for all)."""
    sys.path.insert(0, str(APP))
    from custom_nets.bundle import Bundle
    from lib.options import OptionError
    from lib.trainers import BundleFineTune

    trainer = BundleFineTune(Bundle(MODEL, small_bundles(tmp_path / "bundles") / MODEL), {})
    ran = []
    trainer.run_single_gpu = lambda request, overrides: ran.append(overrides)

    class Datastore:
        def datalist(self):
            return [{"image": str(CT), "label": str(CT)}]

    marker = tmp_path / "ran"
    request = {**trainer.config(), "model": MODEL, "device": "cpu", "local_rank": 0}
    for option in ("max_epochs", "tracking", "tracking_uri", "learning_rate"):
        with pytest.raises(OptionError, match=option):
            trainer({**request, option: hostile_values(marker, tmp_path)["dollar"]}, Datastore())
    assert ran == [] and not marker.exists()

    trainer({**request, "max_epochs": "3", "learning_rate": 0.01, "num_samples": 2}, Datastore())
    (overrides,) = ran
    assert overrides["train#trainer#max_epochs"] == 3 and overrides["learning_rate"] == 0.01
    # val_interval: the bundle's default 5, cut to max_epochs
    assert overrides["device"] == "$torch.device('cpu')" and overrides["val_interval"] == 3
    assert "tracking" not in overrides  # MONAI Label's default ("None") leaves tracking off


# ---------------------------------------------------------------------------------------------- 2. only the datastore


def test_infer_reads_only_datastore_ids_or_its_own_upload(server, temp_unchanged):
    stolen = server.temp / "stolen.nii.gz"  # the temporary folder: where MONAI Label's own check looked
    stolen.write_bytes(CT.read_bytes())
    try:
        for path in (str(stolen), "../studies/ct.nii.gz", "studies/ct.nii.gz", str(server.studies / "ct.nii.gz")):
            expect(infer(server, path), 400, "invalid image id")
        # an existing file of the server's working folder, named like an id: not in the datastore
        expect(infer(server, "cwd_ct.nii.gz"), 404, "not in the datastore")
        expect(infer(server, "", params={"image": str(stolen)}), 422, "option 'image'")
        expect(infer(server, "ct", params={"image": str(stolen)}), 422, "option 'image'")
        expect(infer(server, "ct", session_id="x"), 422, "session")
        expect(infer(server, "ct", file=CT), 422, "not both")
    finally:
        stolen.unlink()
    expect(infer(server, "ct", **JSON_OUT), 200, "label_names")


def test_infer_options_are_parsed(server, temp_unchanged):
    code = "$__import__('os').getcwd()"
    for option, value in (("device", code), ("result_extension", "/../../x"), ("result_dtype", code),
                          ("logging", "NOPE"), ("label_tag", "../../labels"), ("timeout", "nan")):  # fmt: skip
        expect(infer(server, "ct", params={option: value}), 422, f"option '{option}'")
    expect(infer(server, "ct", params={"roi_size": [1, 1, 1]}), 422, "option 'roi_size'")


# ---------------------------------------------------------------------------------------------- 3. no upload left


def test_rejected_uploads_leave_no_temporary_file(server, tmp_path, temp_unchanged):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(CT.read_bytes()[:3000])
    shifted = tmp_path / "shifted.nii.gz"
    ct = nib.load(CT)
    affine = ct.affine.copy()
    affine[:3, 3] += 30.0
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), affine), shifted)

    expect(infer(server, file=text), 415, "unsupported image file type")
    expect(infer(server, file=corrupt), 422, "cannot be loaded")
    for bad_params in ("{not json", "[1, 2]"):
        expect(infer(server, file=CT, params=bad_params), 422, "params")
    with pytest.raises(MONAILabelClientException, match="Status: 422"):
        client.upload_image(str(corrupt), image_id="corrupt")
    with pytest.raises(MONAILabelClientException, match="Status: 422"):
        client.save_label("ct", str(shifted), tag="final")
    response = requests.put(f"{server.url}/datastore/label", params={"image": "ct", "tag": "final"},
                            files={"params": (None, "{oops"), "label": ("l.nii.gz", CT.read_bytes())}, timeout=60)  # fmt: skip
    expect(response, 422, "params is not valid JSON")
    response = requests.put(f"{server.url}/datastore/image", params={"image": "x"},
                            files={"params": (None, "{oops"), "file": ("x.nii.gz", CT.read_bytes())}, timeout=60)  # fmt: skip
    expect(response, 422, "params is not valid JSON")
    expect(requests.put(f"{server.url}/model/{MODEL}", files={"file": ("w.pt", b"junk")}, timeout=60), 403)
    # and one that succeeds: its upload and its result are gone after the response
    expect(infer(server, file=CT, **JSON_OUT), 200, "label_names")
    assert "corrupt" not in client.datastore()["objects"]


# ---------------------------------------------------------------------------------------------- 4. size from header


def test_huge_headers_are_refused_before_reading_voxels(server, tmp_path, temp_unchanged):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    peak = server.peak_memory_kib()
    for size in (1024, 32767):
        bomb = header_only_nifti(tmp_path / f"bomb{size}.nii.gz", size)
        assert bomb.stat().st_size < 100
        expect(infer(server, file=bomb), 422, "too large", "max_voxels")
        with pytest.raises(MONAILabelClientException, match="Status: 422.*too large"):
            client.upload_image(str(bomb), image_id=f"bomb{size}")
        with pytest.raises(MONAILabelClientException, match="Status: 422.*too large"):
            client.save_label("ct", str(bomb), tag="final")
    small_but_damaged = header_only_nifti(tmp_path / "damaged.nii.gz", 400)  # within the limit, too few bytes
    expect(infer(server, file=small_but_damaged), 422, "more than a", "can hold")
    assert server.peak_memory_kib() - peak < 50 * 1024, "the server's peak memory grew"
    assert requests.get(f"{server.url}/info/", timeout=30).ok


# ---------------------------------------------------------------------------------------------- 5. NaN and Inf


def test_nonfinite_voxels_are_refused(server, tmp_path, temp_unchanged):
    nan_ct = ct_with_nonfinite(tmp_path / "nan_ct.nii.gz")
    expect(infer(server, file=nan_ct), 422, "1,001 NaN or infinite voxel")
    MONAILabelClient(server.url, tmpdir=str(tmp_path)).upload_image(str(nan_ct), image_id="nan_ct")
    expect(infer(server, "nan_ct"), 422, "NaN or infinite")


# ---------------------------------------------------------------------------------------------- 6. under load


def test_server_answers_while_inferences_run_and_the_queue_is_bounded(server):
    """Four inferences at once against a queue of two: two run (one at a time), two get 503 with Retry-After, and
    /info, the datastore and the training status answer within 2 s all the while."""
    def timed(function, *args, **kwargs):
        answer = function(*args, **kwargs)
        return answer, time.monotonic()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(timed, infer, server, "ct", **JSON_OUT) for _ in range(4)]
        probes = []  # (latency, when it ended)
        while not all(f.done() for f in futures):
            for path in ("/info/", "/datastore/", "/train/"):
                start = time.monotonic()
                requests.get(f"{server.url}{path}", timeout=30)
                ended = time.monotonic()
                probes.append((ended - start, ended))
            time.sleep(0.2)
        answers = [f.result() for f in futures]
    codes = sorted(a.status_code for a, _ in answers)
    assert codes == [200, 200, 503, 503], [a.text[:200] for a, _ in answers]
    busy = [a for a, _ in answers if a.status_code == 503]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in busy)
    last_inference_ended = max(ended for a, ended in answers if a.status_code == 200)
    # however fast the inferences, each route answered at least once while one of them still ran
    during = [latency for latency, ended in probes if ended < last_inference_ended]
    assert len(during) >= 3 and max(latency for latency, _ in probes) < 2.0, probes


# ---------------------------------------------------------------------------------------------- 7. admin routes


def test_model_upload_needs_authentication(server, tmp_path):
    """New weights change every annotator's results: without authentication nobody may upload them (MONAI Label lets
    anyone). The checks of an upload itself are in test_label_app_auth.py, with an admin's token."""
    weights = server.bundles / MODEL / "models" / "model.pt"
    before = weights.read_bytes()
    good = tmp_path / "good.pt"
    torch.save(small_weights(server.bundles / MODEL), good)
    response = requests.put(f"{server.url}/model/{MODEL}", files={"file": ("good.pt", good.read_bytes())}, timeout=120)
    expect(response, 403, "replacing model weights", "MONAI_LABEL_AUTH_ENABLE")
    assert weights.read_bytes() == before
    assert [p.name for p in weights.parent.iterdir()] == ["model.pt"]


def test_dataset_download_and_logs_need_authentication(server):
    expect(requests.get(f"{server.url}/datastore/dataset", timeout=30), 403, "MONAI_LABEL_AUTH_ENABLE")
    expect(requests.get(f"{server.url}/logs/", timeout=30), 403, "MONAI_LABEL_AUTH_ENABLE")
    expect(requests.get(f"{server.url}/logs/gpu", timeout=30), 403, "MONAI_LABEL_AUTH_ENABLE")
    assert requests.get(f"{server.url}/datastore/image", params={"image": "ct"}, timeout=30).ok  # others still served



def test_without_authentication_nothing_can_be_deleted(server, tmp_path):
    """Annotators segment, upload, save labels and train, but nobody deletes trained weights, images or labels
    (403 naming MONAI_LABEL_AUTH_ENABLE), through this app's routes or MONAI Label's deprecated one; nothing changes on
    disk. With authentication on, only an admin deletes (tests/test_label_app_auth.py)."""
    ct = nib.load(CT)
    label = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), label)
    saved = requests.put(f"{server.url}/datastore/label", params={"image": "ct", "tag": "final"},
                         files={"label": ("ct.nii.gz", label.read_bytes())}, timeout=60)  # fmt: skip
    assert saved.ok, saved.text  # annotators still save labels without authentication
    weights = server.bundles / MODEL / "models" / "model.pt"
    studies, trained = files(server.studies), weights.read_bytes()
    assert any(name.startswith("labels") for name in studies)

    refused = [
        requests.delete(f"{server.url}/model/{MODEL}", timeout=30),
        requests.delete(f"{server.url}/model/no_such_model", timeout=30),  # refused before the name is looked at
        requests.delete(f"{server.url}/datastore/image", params={"id": "ct"}, timeout=30),
        requests.delete(f"{server.url}/datastore/", params={"id": "ct"}, timeout=30),  # MONAI Label's deprecated route
        requests.delete(f"{server.url}/datastore/label", params={"id": "ct", "tag": "final"}, timeout=30),
    ]
    for response in refused:
        expect(response, 403, "MONAI_LABEL_AUTH_ENABLE", "is off")
    assert files(server.studies) == studies and weights.read_bytes() == trained
    assert not list(weights.parent.glob("*.deleted"))
    assert "ct" in requests.get(f"{server.url}/datastore/?output=all", timeout=30).json()["objects"]
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert MODEL in info["models"] and info["models"][MODEL]["trained"] is True


def test_exposure_warning():
    sys.path.insert(0, str(APP))
    from lib.exposure import exposure_warning, served_host

    assert served_host(["start_server", "--app", "a"]) == "0.0.0.0"  # MONAI Label's default
    assert served_host(["start_server", "-i", "10.1.2.3"]) == "10.1.2.3"
    warning = exposure_warning("0.0.0.0", 8000, auth=False)
    assert "every network interface" in warning and "download every image and label" in warning
    assert "replace or delete model weights" in warning and "MONAI_LABEL_AUTH_ENABLE" in warning
    assert exposure_warning("192.168.1.5", 8000, auth=False)
    for quiet in (("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True)):
        assert exposure_warning(quiet[0], 8000, auth=quiet[1]) is None


def test_loopback_server_prints_no_warning(server):
    assert "WARNING: serving on" not in server.log_tail(2000)


# ---------------------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory) -> Path:
    """The small spleen bundle with random weights (a plain state dict), for the command line."""
    bundle = small_bundles(tmp_path_factory.mktemp("cli_bundles")) / MODEL
    (bundle / "models").mkdir()
    torch.save(small_weights(bundle), bundle / "models" / "model.pt")
    return bundle


def peak_growth_kib(call):
    """``call()``'s result and how far this process's peak resident memory rose above its resident memory before the
    call, in KiB (the peak is reset first: ``/proc/self/clear_refs``, Linux)."""

    def status_kib(field: str) -> int:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
        return int(line.split()[1])

    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS:")
    result = call()
    return result, status_kib("VmHWM:") - before


def predict_here(bundle: Path, source: Path, output: Path, capsys) -> subprocess.CompletedProcess:
    """``segresmamba predict`` through its command-line parser (fire) in this process, which saves a process start
    (a MONAI import); its exit status and output as a ``CompletedProcess``."""
    from unittest import mock

    from custom_nets.__main__ import main

    argv = ["segresmamba", "predict", "--bundle", str(bundle), "--input", str(source), "--output", str(output),
            "--device", "cpu"]  # fmt: skip
    capsys.readouterr()
    with mock.patch.object(sys, "argv", argv):
        try:
            main()
            status = 0
        except SystemExit as exit_:
            status = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, out, err)


def one_line_error(run: subprocess.CompletedProcess, *words: str) -> str:
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    line = run.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error: "), run.stderr[-2000:]
    for word in words:
        assert word in line, line
    return line


def test_cli_refuses_huge_headers_with_flat_memory(cli_bundle, tmp_path, capsys):
    one_line_error(predict_here(cli_bundle, tmp_path / "nowhere.nii.gz", tmp_path / "out", capsys), "input not found")
    for size in (1024, 32767):  # a 4 GiB and a 140 TiB volume, as their headers say
        bomb = header_only_nifti(tmp_path / f"bomb{size}.nii.gz", size)
        run, growth = peak_growth_kib(lambda: predict_here(cli_bundle, bomb, tmp_path / "out", capsys))
        one_line_error(run, "too large", "max_voxels")
        assert growth < 100 * 1024, growth  # KiB: no voxel buffer was allocated
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_refuses_nonfinite_voxels(cli_bundle, tmp_path, capsys):
    run = predict_here(cli_bundle, ct_with_nonfinite(tmp_path / "nan_ct.nii.gz"), tmp_path / "out", capsys)
    one_line_error(run, "nan_ct.nii.gz", "1,001 NaN or infinite voxel")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_checks_its_output_folder_first(cli_bundle, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for output, words in ((blocker / "out", "is a file"), (Path("/proc/segresmamba_out"), "not writable")):
        run = predict_here(cli_bundle, CT, output, capsys)
        one_line_error(run, str(output), words)
    # and a writable one works (the check leaves nothing behind in it)
    run = predict_here(cli_bundle, CT, tmp_path / "out", capsys)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["example_ct_sm_seg.nii.gz"]


def test_header_checks_without_reading_voxels(tmp_path):
    """The checks ``check_size`` makes, on each kind of file: limit, uncompressed size, compressed size."""
    from custom_nets.io import InputError, find_inputs, read_header
    from custom_nets.io.header import check_size

    ct = nib.load(CT)
    plain = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj), ct.affine), plain)
    image = find_inputs(plain)[0]
    check_size(image, read_header(image))
    with pytest.raises(InputError, match="too large: 122 x 101 x 30 = 369,660 voxels, the limit is 1,000"):
        check_size(image, read_header(image), max_voxels=1000)
    plain.write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(InputError, match="is truncated: its header announces 739,672 bytes, the file has 739,572"):
        check_size(image, read_header(image))
    nrrd = find_inputs(ROOT / "data" / "pyradiomics_brain_tumor" / "brain2_image.nrrd")[0]
    check_size(nrrd, read_header(nrrd))
    bomb = find_inputs(header_only_nifti(tmp_path / "bomb.nii.gz", 600))[0]  # 216 M voxels: within the limit
    with pytest.raises(InputError, match="more than a .*-byte file can hold"):
        check_size(bomb, read_header(bomb))
