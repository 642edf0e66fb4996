"""The three bundles: metadata, network I/O, and train -> evaluate -> inference as users run them (tiny, CPU).

The spleen bundle runs through the command lines users type (``python -m monai.bundle run ...``, ``torchrun``)
from another working directory; BraTS and BTCV run the same configs through ``monai.bundle.run`` in this
process, which saves the ~20 s start-up of a process per command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_data import make_brats_tree, make_btcv_tree, make_msd_tree
from custom_nets import SegResMamba

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SCHEMA = ROOT / "data" / "schemas" / "meta_schema_20240725.json"
NAMES = ("spleen_ct_segresmamba", "brats21_mri_segresmamba", "btcv_ct_segresmamba")
CHANNELS = {"spleen_ct_segresmamba": (1, 2), "brats21_mri_segresmamba": (4, 3), "btcv_ct_segresmamba": (1, 14)}
# Tiny runs: the smallest network, one training patch per case, one sliding window per volume (the network pads
# every input to 64^3 at least, so smaller patches would not be faster).
TINY = {"feature_size": 8, "patch_size": [64, 64, 64], "num_workers": 0, "sw_batch_size": 1}
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


def load_trained(name: str, checkpoint: Path) -> SegResMamba:
    """The checkpoint is a plain state dict of the bare network (no DDP prefix), loadable with weights_only."""
    in_channels, out_channels = CHANNELS[name]
    network = SegResMamba(in_channels=in_channels, out_channels=out_channels, feature_size=8)
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return network


def check_outputs(name: str, bundle_root: Path, dataset_dir: Path, test_images: list[str]) -> None:
    models = bundle_root / "models"
    assert sorted(p.name for p in models.iterdir()) == ["model.pt"]  # no temporary file left behind
    load_trained(name, models / "model.pt")
    energy = json.loads((bundle_root / "eval" / "energy.json").read_text())  # written when training completes
    assert energy["energy_kwh"] > 0 and energy["co2_kg"] > 0 and energy["seconds"] > 0
    metrics = (bundle_root / "eval" / "metrics.csv").read_text()
    assert metrics.startswith("val_mean_dice,") and float(metrics.splitlines()[0].split(",")[1]) >= 0
    out_channels = CHANNELS[name][1]
    for image in test_images:
        reference = nib.load(image)
        stem = Path(image).name[: -len(".nii.gz")]
        mask = nib.load(bundle_root / "eval" / f"{stem}_seg.nii.gz")
        values = np.asarray(mask.dataobj)
        if out_channels == 3:  # TC, WT, ET as 3 binary channels, channel last
            assert values.shape == (*reference.shape, 3) and set(np.unique(values)) <= {0, 1}
        else:
            assert values.shape == reference.shape and set(np.unique(values)) <= set(range(out_channels))
        np.testing.assert_allclose(mask.affine, reference.affine, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_validates_against_schema(name):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=configs(name, "metadata.json")[0], filepath=str(SCHEMA))


@pytest.mark.parametrize("name", NAMES)
def test_verify_net_in_out(name):
    from monai.bundle import verify_net_in_out

    # "*" spatial sizes: 40 is not a multiple of the network's 32, which it must accept
    verify_net_in_out(
        net_id="network_def", meta_file=configs(name, "metadata.json")[0],
        config_file=configs(name, "inference.json")[0], any=40, feature_size=8,
    )


def test_spleen_cli_train_evaluate_infer(datasets, tmp_path):
    name = "spleen_ct_segresmamba"
    bundle_root = tmp_path / "spleen_run"
    common = {"bundle_root": bundle_root, "dataset_dir": datasets[name], **TINY}
    run = [sys.executable, "-m", "monai.bundle", "run"]
    train = configs(name, "train.json")[0]
    run_cli(run + ["--config_file", train] + cli_args({**common, **TRAIN, **SPLIT[name]}), tmp_path)
    evaluate = str(configs(name, "train.json", "evaluate.json")).replace(" ", "")
    run_cli(run + ["--config_file", evaluate] + cli_args({**common, **SPLIT[name]}), tmp_path)
    run_cli(run + ["--config_file", configs(name, "inference.json")[0]] + cli_args(common), tmp_path)
    test_images = [str(datasets[name] / "imagesTs" / "spleen_3.nii.gz")]
    check_outputs(name, bundle_root, datasets[name], test_images)


@pytest.mark.parametrize("name", ["brats21_mri_segresmamba", "btcv_ct_segresmamba"])
def test_train_evaluate_infer(name, datasets, tmp_path, monkeypatch):
    from monai.bundle import run

    monkeypatch.chdir(tmp_path)
    bundle_root = tmp_path / "run"
    common = {"bundle_root": str(bundle_root), "dataset_dir": str(datasets[name]), **TINY}
    train = {**TRAIN, "max_steps": 1} if name == "btcv_ct_segresmamba" else TRAIN
    if name == "btcv_ct_segresmamba":
        train.pop("epochs")  # derived from max_steps
    run(config_file=configs(name, "train.json"), **common, **train, **SPLIT[name])
    run(config_file=configs(name, "train.json", "evaluate.json"), **common, **SPLIT[name])
    run(config_file=configs(name, "inference.json"), **common)
    if name == "brats21_mri_segresmamba":
        test_images = sorted(str(p) for p in datasets[name].glob("*/*_flair.nii.gz"))
    else:
        test_images = sorted(str(p) for p in (datasets[name] / "img").glob("*.nii.gz"))
    check_outputs(name, bundle_root, datasets[name], test_images)


def test_multi_gpu_train_runs_ddp_on_cpu_with_gloo(datasets, tmp_path):
    name = "spleen_ct_segresmamba"
    bundle_root = tmp_path / "ddp_run"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    merged = str(configs(name, "train.json", "multi_gpu_train.json")).replace(" ", "")
    # 2 validation cases: one per process (each rank must have data for the metric's all-gather)
    overrides = {"bundle_root": bundle_root, "dataset_dir": datasets[name], **TINY, **TRAIN, "num_val_cases": 2}
    done = run_cli(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "--config_file", merged]
        + cli_args(overrides), tmp_path,
    )
    assert "val_mean_dice" in done.stdout + done.stderr
    load_trained(name, bundle_root / "models" / "model.pt")
    energy = json.loads((bundle_root / "eval" / "energy.json").read_text())  # rank 0 reports for both processes
    assert energy["power_source"].endswith("x 2 processes"), energy


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
