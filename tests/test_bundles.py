"""The three bundles: metadata, network I/O, and train -> evaluate -> inference as users run them (tiny, CPU).

Train, evaluate and infer run the bundles' configs through ``monai.bundle.run`` in this process, which saves the
start-up of a process (a MONAI import, ~15 s on 2 cores) per command. The command lines users type run where a
process is what is tested: ``python -m monai.bundle run training`` killed mid-epoch and resumed (from another
working directory, the package on PYTHONPATH as if installed), and ``torchrun ... -m monai.bundle run`` for two
processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_data import FAST_SETTINGS, make_brats_tree, make_btcv_tree, make_msd_tree
from custom_nets import SegResMamba

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SCHEMA = ROOT / "data" / "schemas" / "meta_schema_20240725.json"
FULL = ("spleen_ct_segresmamba", "brats21_mri_segresmamba", "btcv_ct_segresmamba")
# the fast CT variants: the full bundle's configs at 3 mm with a narrow network
FAST = {"spleen_ct_segresmamba_fast": "spleen_ct_segresmamba", "btcv_ct_segresmamba_fast": "btcv_ct_segresmamba"}
NAMES = FULL + tuple(FAST)
CHANNELS = {"spleen_ct_segresmamba": (1, 2), "brats21_mri_segresmamba": (4, 3), "btcv_ct_segresmamba": (1, 14)}
CHANNELS.update({fast: CHANNELS[full] for fast, full in FAST.items()})
# Tiny runs: the smallest network, one 64 x 32 x 32 training patch per case, one or two sliding windows per
# volume. ``min_size`` 32 lets the network take such a patch as it is (with its default, 64, it pads every input to
# 64^3 at least: four times the voxels).
SMALL_INPUT = {"patch_size": [64, 32, 32], "network_def#min_size": 32}
TINY = {"feature_size": 8, **SMALL_INPUT, "num_workers": 0, "sw_batch_size": 1}
TRAIN = {"epochs": 1, "val_interval": 1}
SPLIT = {"spleen_ct_segresmamba": {"num_val_cases": 1}, "brats21_mri_segresmamba": {"fold": 0, "num_folds": 3},
         "btcv_ct_segresmamba": {"num_val_cases": 1}}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {
        "spleen_ct_segresmamba": make_msd_tree(root / "Task09_Spleen", num_labelled=3, num_test=1),
        "brats21_mri_segresmamba": make_brats_tree(root / "BraTS2021", num_cases=3),
        "btcv_ct_segresmamba": make_btcv_tree(root / "BTCV", num_cases=2),
    }


def configs(name: str, *files: str) -> list[str]:
    return [str(BUNDLES / name / "configs" / f) for f in files]


def cli_args(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return args


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as if the segresmamba package were installed
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def load_trained(name: str, checkpoint: Path, feature_size: int = 8) -> SegResMamba:
    """The checkpoint is a plain state dict of the bare network (no DDP prefix), loadable with weights_only."""
    in_channels, out_channels = CHANNELS[name]
    network = SegResMamba(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size)
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return network


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard scalars written under ``log_dir``, by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def check_training_outputs(name: str, bundle_root: Path, epochs: int, feature_size: int = 8) -> dict:
    """The best model, the training checkpoint, TensorBoard events, curves and energy report of a finished run;
    returns the training checkpoint."""
    models, output = bundle_root / "models", bundle_root / "eval"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint.pt", "model.pt"]  # no temporary file left
    trained = load_trained(name, models / "model.pt", feature_size)
    checkpoint = torch.load(models / "checkpoint.pt", map_location="cpu", weights_only=True)
    expected = {"model", "optimizer", "trainer", "best_model", "curves"}
    expected |= {"lr_scheduler"} if name.startswith("brats21") else set()
    assert set(checkpoint) == expected
    trainer = checkpoint["trainer"]
    assert trainer["iteration"] == epochs * trainer["epoch_length"] and trainer["max_epochs"] == epochs
    assert checkpoint["model"].keys() == trained.state_dict().keys()
    energy = json.loads((output / "energy.json").read_text())  # written when training completes
    assert energy["energy_kwh"] > 0 and energy["co2_kg"] > 0 and energy["seconds"] > 0
    curves = (output / "curves.csv").read_text().splitlines()
    assert curves[0] == "epoch,loss,val_mean_dice" and [int(r.split(",")[0]) for r in curves[1:]] == list(range(1, epochs + 1))
    assert (output / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = scalars(output)
    assert len(logged["train_loss"]) == epochs * trainer["epoch_length"]
    assert [step for step, _ in logged["val_mean_dice"]] == list(range(1, epochs + 1))
    dice_in_csv = [float(r.split(",")[2]) for r in curves[1:]]
    np.testing.assert_allclose([value for _, value in logged["val_mean_dice"]], dice_in_csv, rtol=1e-5)
    return checkpoint


def check_evaluation_outputs(bundle_root: Path, dataset_dir: Path, num_val_cases: int) -> None:
    """Evaluation: the mean Dice and one row per validation case (MetricsSaver, as the Model Zoo's evaluate)."""
    metrics = (bundle_root / "eval" / "metrics.csv").read_text()
    assert metrics.startswith("val_mean_dice,") and float(metrics.splitlines()[0].split(",")[1]) >= 0
    per_case = (bundle_root / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert per_case[0].startswith("filename,class0")
    files = [Path(row.split(",")[0]) for row in per_case[1:]]
    assert len(set(files)) == num_val_cases and all(f.is_file() and dataset_dir in f.parents for f in files)
    assert all(0 <= float(row.split(",")[-1]) <= 1 for row in per_case[1:])


def check_masks(name: str, bundle_root: Path, test_images: list[str]) -> None:
    out_channels = CHANNELS[name][1]
    for image in test_images:
        reference = nib.load(image)
        stem = Path(image).name[: -len(".nii.gz")]
        mask = nib.load(bundle_root / "eval" / f"{stem}_seg.nii.gz")
        values = np.asarray(mask.dataobj)
        if out_channels == 3:  # TC, WT, ET made into the BraTS label map by the bundle's RegionsToLabelsd
            assert values.shape == reference.shape and set(np.unique(values)) <= {0, 1, 2, 4}
        else:
            assert values.shape == reference.shape and set(np.unique(values)) <= set(range(out_channels))
        np.testing.assert_allclose(mask.affine, reference.affine, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_validates_against_schema(name):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=configs(name, "metadata.json")[0], filepath=str(SCHEMA))


@pytest.mark.parametrize("name", NAMES)
def test_metadata_declares_the_packages_it_runs_with(name):
    """``required_packages_version`` names this package at its version, and each pin is what the tests run with."""
    from importlib.metadata import version

    import custom_nets

    required = json.loads(Path(configs(name, "metadata.json")[0]).read_text())["required_packages_version"]
    assert required["segresmamba"] == custom_nets.__version__
    assert {"nibabel", "pytorch-ignite", "tensorboard"} <= set(required)
    assert {package: version(package) for package in required} == required


@pytest.mark.parametrize("name", NAMES)
def test_train_handlers_are_component_definitions(name):
    """MONAI Label's bundle train task reads ``train#handlers`` as a list of component dicts (it looks for a
    ``CheckpointLoader`` by ``_target_`` before fine-tuning from saved weights): a reference string there breaks
    every training after the first."""
    handlers = json.loads((BUNDLES / name / "configs" / "train.json").read_text())["train"]["handlers"]
    assert handlers and all(isinstance(handler, dict) and "_target_" in handler for handler in handlers)


@pytest.mark.parametrize("name", NAMES)
def test_large_files_list_reads_as_the_zoo_reads_it(name):
    """The zoo's CI and ``monai.bundle download_large_files`` read ``large_files.yml``: a list, with no fake URL."""
    from monai.bundle import ConfigParser, download_large_files

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / name / "large_files.yml"))
    entries = parser.get()["large_files"]
    assert isinstance(entries, list)
    for entry in entries:  # when weights are released: a real https URL to a file under models/
        assert entry["path"].startswith("models/") and entry["url"].startswith("https://"), entry
    download_large_files(bundle_path=str(BUNDLES / name))  # nothing to fetch, and no error


@pytest.mark.parametrize("name", NAMES)
def test_verify_net_in_out(name):
    from monai.bundle import verify_net_in_out

    # "*" spatial sizes: 40 is not a multiple of the network's 32, which it must accept
    verify_net_in_out(
        net_id="network_def", meta_file=configs(name, "metadata.json")[0],
        config_file=configs(name, "inference.json")[0], any=40, feature_size=8,
    )


@pytest.mark.parametrize("name", NAMES)
def test_train_evaluate_infer(name, datasets, tmp_path, monkeypatch):
    """Training (``run`` with the default id for the spleen bundle, ``run training`` for the others), ``run
    evaluating`` for evaluation and inference. The fast bundles run with their own network and spacing."""
    from monai.bundle import run

    monkeypatch.chdir(tmp_path)
    layout = FAST.get(name, name)
    bundle_root = tmp_path / "run"
    # the fast bundles: their network and spacing, one small patch per case (their num_samples is 2)
    settings = {**SMALL_INPUT, "num_workers": 0, "sw_batch_size": 1, "num_samples": 1} if name in FAST else TINY
    common = {"bundle_root": str(bundle_root), "dataset_dir": str(datasets[layout]), **settings}
    train = {**TRAIN, "max_steps": 1} if layout == "btcv_ct_segresmamba" else TRAIN
    if layout == "btcv_ct_segresmamba":
        train.pop("epochs")  # derived from max_steps
    run_id = {"run_id": "training"} if name != "spleen_ct_segresmamba" else {}
    run(**run_id, config_file=configs(name, "train.json"), **common, **train, **SPLIT[layout])
    feature_size = json.loads(Path(configs(name, "train.json")[0]).read_text())["feature_size"] if name in FAST else 8
    check_training_outputs(name, bundle_root, epochs=1, feature_size=feature_size)
    run("evaluating", config_file=configs(name, "train.json", "evaluate.json"), **common, **SPLIT[layout])
    check_evaluation_outputs(bundle_root, datasets[layout], num_val_cases=1)
    run("evaluating", config_file=configs(name, "inference.json"), **common)
    if layout == "brats21_mri_segresmamba":
        test_images = sorted(str(p) for p in datasets[layout].glob("*/*_flair.nii.gz"))
    elif layout == "btcv_ct_segresmamba":
        test_images = sorted(str(p) for p in (datasets[layout] / "img").glob("*.nii.gz"))
    else:
        test_images = [str(datasets[layout] / "imagesTs" / "spleen_3.nii.gz")]
    check_masks(name, bundle_root, test_images)


@pytest.mark.parametrize("fast", FAST)
def test_fast_bundle_is_the_full_bundle_with_its_settings(fast):
    """Same workflow: every config key but the fast settings equals the full bundle's; the settings are narrower."""
    full = FAST[fast]
    files = sorted(p.name for p in (BUNDLES / fast / "configs").iterdir())
    assert files == sorted(p.name for p in (BUNDLES / full / "configs").iterdir())
    for file in files:
        if file == "metadata.json":
            continue
        ours, theirs = (BUNDLES / fast / "configs" / file, BUNDLES / full / "configs" / file)
        if not file.endswith(".json"):
            assert ours.read_text() == theirs.read_text(), file
            continue
        ours, theirs = json.loads(ours.read_text()), json.loads(theirs.read_text())
        assert ours.keys() == theirs.keys(), file
        differing = {key for key in ours if ours[key] != theirs[key]}
        assert differing <= FAST_SETTINGS, f"{fast}/configs/{file}: {differing - FAST_SETTINGS} differ from {full}"
    ours = json.loads((BUNDLES / fast / "configs" / "train.json").read_text())
    theirs = json.loads((BUNDLES / full / "configs" / "train.json").read_text())
    assert ours["pixdim"] == [3.0, 3.0, 3.0] and ours["feature_size"] < theirs["feature_size"]
    fast_meta, full_meta = (json.loads((BUNDLES / b / "configs" / "metadata.json").read_text()) for b in (fast, full))
    assert fast_meta["network_data_format"] == full_meta["network_data_format"]
    assert fast_meta["required_packages_version"] == full_meta["required_packages_version"]
    assert (BUNDLES / fast / "LICENSE").read_text() == (BUNDLES / full / "LICENSE").read_text()


def test_multi_gpu_train_and_evaluate_run_ddp_on_cpu_with_gloo(datasets, tmp_path):
    name = "spleen_ct_segresmamba"
    bundle_root = tmp_path / "ddp_run"
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    run = ["-m", "monai.bundle", "run", "--config_file"]
    # 2 validation cases: one per process (each rank must have data for the metric's all-gather)
    overrides = {"bundle_root": bundle_root, "dataset_dir": datasets[name], **TINY, "num_val_cases": 2}
    merged = str(configs(name, "train.json", "multi_gpu_train.json")).replace(" ", "")
    done = run_cli(torchrun + run + [merged] + cli_args({**overrides, **TRAIN}), tmp_path)
    assert "val_mean_dice" in done.stdout + done.stderr
    check_training_outputs(name, bundle_root, epochs=1)  # its scalar counts: only rank 0 logs to TensorBoard
    output = bundle_root / "eval"
    energy = json.loads((output / "energy.json").read_text())  # rank 0 reports for both processes
    assert energy["power_source"].endswith("x 2 processes"), energy

    merged = str(configs(name, "train.json", "evaluate.json", "multi_gpu_evaluate.json")).replace(" ", "")
    done = run_cli(torchrun + run + [merged] + cli_args(overrides), tmp_path)
    check_evaluation_outputs(bundle_root, datasets[name], num_val_cases=2)  # both ranks' cases, gathered


def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(datasets, tmp_path):
    """``python -m monai.bundle run training`` as users type it; SIGKILL during epoch 2; ``--resume true`` goes on
    with epoch 2 from the epoch-1 state."""
    name = "spleen_ct_segresmamba"
    bundle_root = tmp_path / "resumed"
    checkpoint_file = bundle_root / "models" / "checkpoint.pt"
    overrides = {"bundle_root": str(bundle_root), "dataset_dir": str(datasets[name]), **TINY, **SPLIT[name],
                 "epochs": 2, "val_interval": 1}
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               configs(name, "train.json")[0]] + cli_args(overrides)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 400
            while not checkpoint_file.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert checkpoint_file.exists(), (tmp_path / "killed.log").read_text()[-3000:]
            process.send_signal(signal.SIGKILL)  # epoch 1's checkpoint has landed: epoch 2 is running
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (bundle_root / "eval" / "energy.json").exists()  # the run did not complete
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    assert saved["trainer"]["iteration"] == saved["trainer"]["epoch_length"]  # epoch 1 of 2
    assert sorted(p.name for p in checkpoint_file.parent.iterdir()) == ["checkpoint.pt", "model.pt"]

    done = run_cli(command + ["--resume", "true"], tmp_path)
    output = done.stdout + done.stderr
    assert f"Restored all variables from {checkpoint_file}" in output
    assert "Epoch: 2/2, Iter: 1/" in output and "Epoch: 1/2" not in output  # epoch 1 is not trained again
    resumed = check_training_outputs(name, bundle_root, epochs=2)  # curves of both epochs
    assert resumed["curves"]["metrics"][1] == saved["curves"]["metrics"][1]


def test_resume_without_a_checkpoint_says_so(datasets, tmp_path, monkeypatch):
    from monai.bundle import run

    name = "spleen_ct_segresmamba"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as raised:
        run("training", config_file=configs(name, "train.json"), bundle_root=str(tmp_path),
            dataset_dir=str(datasets[name]), resume="true", **TINY, **SPLIT[name])
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, FileNotFoundError) and "no training checkpoint at" in str(e) for e in chain), chain
    assert not list((tmp_path / "models").glob("*"))


def test_bad_dataset_folder_stops_the_run_with_a_clear_error(datasets, tmp_path, monkeypatch):
    from monai.bundle import run

    from custom_nets.datasets import DatasetLayoutError

    name = "btcv_ct_segresmamba"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as raised:
        wrong_layout = datasets["spleen_ct_segresmamba"]
        run(config_file=configs(name, "train.json"), bundle_root=str(tmp_path), dataset_dir=str(wrong_layout), **TINY)
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    layout_errors = [e for e in chain if isinstance(e, DatasetLayoutError)]
    assert layout_errors, f"no DatasetLayoutError in {chain}"
    assert "no img/ folder in" in str(layout_errors[0]) and "expected the BTCV layout" in str(layout_errors[0])
    assert not (tmp_path / "models" / "model.pt").exists()
