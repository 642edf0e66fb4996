"""The project installed with ``pip install .`` (not editable) works from any folder: the bundles and the demo's
sample case travel with the package and are found by ``custom_nets.bundle.shipped_folder``; a source checkout uses
its own ``bundles/`` and ``data/``; ``SEGRESMAMBA_BUNDLES`` / ``SEGRESMAMBA_DATA`` point elsewhere."""

import configparser
import glob
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, ROOT
from custom_nets.bundle import find_bundle, find_bundles, shipped_folder
from custom_nets.demo import sample_case
from custom_nets.io import InputError

BUNDLE = "spleen_ct_segresmamba"
DEMO_FILES = {"example_ct.nii.gz", "example_ct_seg_total_v1.nii.gz", "example_ct_seg_total_v1_labels.json",
              "LICENSE_TotalSegmentator_Apache-2.0.txt", "README.md"}  # fmt: skip


def shipped_files() -> set[str]:
    """What an installation must carry: each bundle's configs, docs, license and large-files list (not models/ or
    eval/), and the demo's sample case with its license."""
    files = set()
    for bundle in sorted((ROOT / "bundles").iterdir()):
        if (bundle / "configs" / "metadata.json").is_file():
            files |= {str(p.relative_to(ROOT)) for p in (bundle / "configs").iterdir() if p.is_file()}
            files |= {str(p.relative_to(ROOT)) for p in (bundle / "docs").rglob("*") if p.is_file()}
            files.add(str((bundle / "LICENSE").relative_to(ROOT)))
            files.add(str((bundle / "large_files.yml").relative_to(ROOT)))
    files |= {f"data/totalseg_ct_abdomen/{name}" for name in DEMO_FILES}
    return files


def test_setup_cfg_installs_every_shipped_file_where_the_package_looks():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    installed = {}
    for target, sources in config["options.data_files"].items():
        for pattern in sources.split():
            for source in glob.glob(pattern.strip(), root_dir=ROOT):
                installed[source] = target
    assert set(installed) == shipped_files()
    for source, target in installed.items():
        # share/segresmamba/<bundles|data>/... mirrors the repository's layout below bundles/ and data/
        assert f"share/segresmamba/{Path(source).parent}" == target, source


def test_a_checkout_uses_its_own_folders(monkeypatch):
    monkeypatch.delenv("SEGRESMAMBA_BUNDLES", raising=False)
    monkeypatch.delenv("SEGRESMAMBA_DATA", raising=False)
    assert shipped_folder("bundles") == ROOT / "bundles"
    assert shipped_folder("data") == DATA
    assert sample_case() == (DATA / "totalseg_ct_abdomen" / "example_ct.nii.gz",
                             DATA / "totalseg_ct_abdomen" / "example_ct_seg_total_v1.nii.gz")  # fmt: skip
    assert find_bundle(BUNDLE).path == ROOT / "bundles" / BUNDLE
    assert set(find_bundles()) == {folder.name for folder in (ROOT / "bundles").iterdir()}
    assert {"brats21_mri_segresmamba", "btcv_ct_segresmamba", BUNDLE, f"{BUNDLE}_fast"} <= set(find_bundles())


def test_environment_variables_point_elsewhere(monkeypatch, tmp_path):
    bundles = tmp_path / "my_bundles"
    shutil.copytree(ROOT / "bundles" / BUNDLE, bundles / "renamed", ignore=shutil.ignore_patterns("models", "eval"))
    monkeypatch.setenv("SEGRESMAMBA_BUNDLES", str(bundles))
    assert shipped_folder("bundles") == bundles
    assert find_bundle("renamed").path == bundles / "renamed"
    assert set(find_bundles()) == {"renamed"}
    with pytest.raises(InputError, match=r"unknown model\(s\) \['spleen_ct_segresmamba'\]; bundles in .*\['renamed'\]"):
        find_bundles(names=[BUNDLE])
    monkeypatch.setenv("SEGRESMAMBA_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"SEGRESMAMBA_DATA=.*nowhere is not a folder"):
        sample_case()
    monkeypatch.setenv("SEGRESMAMBA_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="the demo's sample case is missing: .*example_ct.nii.gz"):
        sample_case()
    with pytest.raises(ValueError, match="unknown shipped folder 'models'"):
        shipped_folder("models")


def test_a_bundle_is_read_from_its_own_metadata(tmp_path):
    bundle = find_bundle("btcv_ct_segresmamba")
    assert (bundle.input_key, bundle.output_key, bundle.input_channels) == ("image", "pred", 1)
    assert len(bundle.labels) == 13 and "background" not in bundle.labels and bundle.labels["spleen"] == 1
    assert bundle.parser("inference")["bundle_root"] == str(bundle.path)
    assert find_bundle("brats21_mri_segresmamba").input_channels == 4
    with pytest.raises(InputError, match="has no configs/deploy.json"):
        bundle.config_file("deploy")
    broken = tmp_path / "broken"
    (broken / "configs").mkdir(parents=True)
    (broken / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bundle .*broken: cannot read .*metadata.json"):
        find_bundle(broken)


def test_demo_options_are_parsed_before_they_become_config_overrides(tmp_path):
    from custom_nets.__main__ import demo

    for options, message in [
        (dict(epochs="$__import__('os').remove('x')"), "--epochs must be a positive int, not \"\\$__import__"),
        (dict(epochs=0), "--epochs must be a positive int, not 0"),
        (dict(patch=1.5), "--patch must be a whole number, not 1.5"),
        (dict(crops_per_epoch=True), "--crops_per_epoch must be a positive int"),
        (dict(spacing="6"), "--spacing must be a positive float"),
    ]:
        with pytest.raises(InputError, match=message):
            demo(output_dir=str(tmp_path / "demo"), **options)
    assert not (tmp_path / "demo").exists()


def test_demo_without_its_sample_case_says_so_in_one_line(tmp_path, monkeypatch):
    from custom_nets.__main__ import demo

    monkeypatch.setenv("SEGRESMAMBA_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="SEGRESMAMBA_DATA=.*nowhere is not a folder"):
        demo(output_dir=str(tmp_path / "demo"))
    monkeypatch.setenv("SEGRESMAMBA_DATA", str(tmp_path))
    with pytest.raises(InputError, match="the demo's sample case is missing: .*example_ct.nii.gz"):
        demo(output_dir=str(tmp_path / "demo"))
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------------------------------- pip install .

SMALL_CT = DATA / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"
# logs: MONAI Label servers of tests running beside this one (pytest -n 2) append to apps/segresmamba/logs
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "outputs", "*.egg-info", "__pycache__",
                                    ".pytest_cache", "models", "eval", "logs")  # fmt: skip


def can_build_here() -> bool:
    """Whether this environment builds the wheel itself: setuptools with its own bdist_wheel (70.1+) or with the
    wheel package (a fresh venv of Python 3.11 has setuptools 65 without it; pip then builds in isolation, from
    the package index)."""
    import importlib.util

    import setuptools

    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A wheel of a copy of the repository (``pip wheel --no-deps .``), installed without dependencies into a fresh
    virtual environment that sees this environment's packages (a .pth file) but not the checkout, and a folder
    that has nothing to do with the project to run in."""
    work = tmp_path_factory.mktemp("install")
    source, wheels, venv = work / "source", work / "wheels", work / "venv"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run = dict(check=True, capture_output=True, text=True, timeout=600)
    isolation = ["--no-build-isolation"] if can_build_here() else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels), str(source)],
                   **run)  # fmt: skip
    (wheel,) = wheels.glob("segresmamba-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **run)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], **run)
    # plain paths: the editable install of the checkout there (a finder loaded by its own .pth) stays unused
    (Path(purelib.stdout.strip()) / "outer_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], **run)  # fmt: skip
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SEGRESMAMBA_")}
    return {"venv": venv.resolve(), "python": python, "cwd": elsewhere, "env": env,
            "share": (venv / "share" / "segresmamba").resolve()}  # fmt: skip


def run_in(installed: dict, *command, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=installed["cwd"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_installed_package_finds_its_bundles_and_data(installed):
    found = run_in(installed, installed["python"], "-c", "import custom_nets.bundle as b; print(b.__file__); "
                   "print(b.bundles_folder()); print(b.shipped_folder('data'))")  # fmt: skip
    assert found.returncode == 0, found.stderr
    module, bundles, data = (Path(line) for line in found.stdout.splitlines())
    assert module.is_relative_to(installed["venv"]) and not module.is_relative_to(ROOT), module
    assert bundles == installed["share"] / "bundles" and data == installed["share"] / "data"
    assert sorted(p.name for p in bundles.iterdir()) == sorted(p.name for p in (ROOT / "bundles").iterdir())
    assert not list(bundles.glob("*/models")) and not list(bundles.glob("*/eval"))


@pytest.mark.slow
def test_installed_package_builds_its_cpu_kernels(installed):
    """The C source travels in the wheel, and is compiled from there on first use."""
    found = run_in(installed, installed["python"], "-c", "from custom_nets.ops.compiled_kernel import SOURCE, "
                   "compiled_kernels; print(SOURCE); print(compiled_kernels()[1] or 'built')")  # fmt: skip
    assert found.returncode == 0, found.stderr
    source, outcome = found.stdout.splitlines()
    assert Path(source).is_relative_to(installed["venv"]) and Path(source).is_file()
    assert outcome == "built"


@pytest.mark.slow
def test_installed_predict_finds_the_bundle_and_says_its_weights_are_missing(installed):
    result = run_in(installed, installed["venv"] / "bin" / "segresmamba", "predict", "--bundle", BUNDLE,
                    "--input", SMALL_CT, "--output", "masks")  # fmt: skip
    assert result.returncode == 1
    weights = installed["share"] / "bundles" / BUNDLE / "models" / "model.pt"
    assert f"error: bundle {BUNDLE} has no trained weights ({weights} is missing)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (installed["cwd"] / "masks").exists()


@pytest.mark.slow
def test_installed_demo_runs_and_writes_under_the_current_folder(installed):
    result = run_in(installed, installed["venv"] / "bin" / "segresmamba", "demo", "--epochs", 1,
                    "--crops_per_epoch", 1, "--spacing", 6)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = installed["cwd"] / "outputs" / "demo"
    summary = json.loads((output / "summary.json").read_text())
    assert Path(summary["mask"]).is_file() and Path(summary["mask"]).is_relative_to(output)
    assert (output / "overlay.png").stat().st_size > 0 and (output / "models" / "model.pt").is_file()
    assert 0.0 <= summary["dice_vs_totalsegmentator"] <= 1.0
    # the installed bundle is read, never written to
    assert not (installed["share"] / "bundles" / BUNDLE / "models").exists()


@pytest.mark.slow
def test_checkout_label_app_serves_the_installed_bundles(installed, tmp_path):
    import requests

    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copyfile(SMALL_CT, studies / "ct.nii.gz")
    port = free_port()
    log = tmp_path / "server.log"
    command = [installed["python"], "-m", "monailabel.main", "start_server", "--app", ROOT / "apps" / "segresmamba",
               "--studies", studies, "--host", "127.0.0.1", "--port", port]  # fmt: skip
    env = {**installed["env"], "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    with open(log, "wb") as out:
        server = subprocess.Popen([str(c) for c in command], cwd=installed["cwd"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                info = requests.get(f"{url}/info/", timeout=5)
                if info.ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        # no --conf models: every installed bundle, each with its labels
        models = info.json()["models"]
        assert set(models) == {p.name for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir()}
        assert models["btcv_ct_segresmamba"]["labels"]["liver"] == 6
        assert models["brats21_mri_segresmamba"]["labels"] == {
            "necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4}
        # the installed bundle answers: its weights would be read from the installed folder
        answer = requests.post(f"{url}/infer/{BUNDLE}?image=ct", timeout=300)
        weights = installed["share"] / "bundles" / BUNDLE / "models" / "model.pt"
        assert answer.status_code == 409 and str(weights) in answer.text, answer.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
