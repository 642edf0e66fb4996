"""The app's Train task: defaults from each bundle's train.json shown in /info, request overrides within range, and
where a run starts from (an interrupted run's training checkpoint, else models/model.pt, else scratch)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from label_server import APP, ROOT, LabelServer

pytest.importorskip("monailabel")

BUNDLES = ROOT / "bundles"
FAST = "spleen_ct_segresmamba_fast"
SMALL_CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"
SMALL_SEG = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_sm_seg_total_v2.nii.gz"
# cheap epochs: one 64^3 crop, no loader processes
CHEAP = {"device": "cpu", "num_workers": 0, "num_samples": 1}


def copy_bundle(folder: Path, name: str = FAST, **finetune) -> Path:
    """A copy of ``bundles/<name>`` (no weights), its train.json's ``finetune`` section updated with ``finetune``."""
    bundle = folder / name
    shutil.copytree(BUNDLES / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    if finetune:
        path = bundle / "configs" / "train.json"
        config = json.loads(path.read_text())
        config["finetune"].update(finetune)
        path.write_text(json.dumps(config, indent=4))
    return bundle


def trainer_for(bundle: Path):
    sys.path.insert(0, str(APP))
    from custom_nets.bundle import Bundle
    from lib.trainers import BundleFineTune

    return BundleFineTune(Bundle(bundle.name, bundle), {})


def save_checkpoint(path: Path, epoch: int, planned: int, epoch_length: int = 2) -> Path:
    """A training checkpoint as ``TrainingCheckpoint`` writes it (only the trainer state matters here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = {"iteration": epoch * epoch_length, "epoch_length": epoch_length, "max_epochs": planned}
    torch.save({"trainer": trainer, "model": {"w": torch.zeros(1)}}, path)
    return path


class OneImage:
    """The one method of a datastore the train task reads."""

    def datalist(self):
        return [{"image": str(SMALL_CT), "label": str(SMALL_SEG)}]


# ---------------------------------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("name", sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file()))
def test_defaults_come_from_the_bundles_train_json(name):
    config = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
    shown = trainer_for(BUNDLES / name).config()
    assert shown["max_epochs"] == config["finetune"]["max_epochs"]
    assert shown["val_interval"] == config["finetune"]["val_interval"]
    assert shown["learning_rate"] == config["learning_rate"]  # "@learning_rate": the bundle's own
    assert shown["model_filename"] == ["model.pt"]


def test_fast_and_full_bundles_propose_different_training(tmp_path):
    fast, full = trainer_for(BUNDLES / FAST).config(), trainer_for(BUNDLES / "spleen_ct_segresmamba").config()
    assert fast["max_epochs"] < full["max_epochs"] and fast["learning_rate"] > full["learning_rate"]
    # read from the bundle's data, not its name: the same bundle with another section shows that section
    edited = trainer_for(copy_bundle(tmp_path, max_epochs=7, val_interval=7, learning_rate=0.02)).config()
    assert (edited["max_epochs"], edited["val_interval"], edited["learning_rate"]) == (7, 7, 0.02)


@pytest.mark.parametrize("section, words", [
    ({"max_epochs": "$20 / 8"}, ["max_epochs", "whole number"]),  # the bundle's expressions run, then are checked
    ({"learning_rate": "fast"}, ["learning_rate", "expected a number"]),
    ({"max_epochs": 0}, ["max_epochs", "[1"]),
    ({"warmup": 3}, ["warmup", "not an option"]),
    ({"max_epochs": 4, "val_interval": 5}, ["val_interval 5 is more than max_epochs 4"]),
])
def test_a_bad_finetune_section_stops_the_app_naming_the_bundle(tmp_path, section, words):
    with pytest.raises(ValueError) as error:
        trainer_for(copy_bundle(tmp_path, **section))
    for word in [FAST, "finetune", *words]:
        assert word in str(error.value)


def test_requests_override_the_defaults_within_range(tmp_path):
    from lib.options import OptionError

    trainer = trainer_for(copy_bundle(tmp_path))
    parsed = trainer.parse_request({"model": FAST})
    assert (parsed["max_epochs"], parsed["val_interval"], parsed["learning_rate"]) == (20, 5, 0.003)
    parsed = trainer.parse_request({"model": FAST, "max_epochs": "40", "learning_rate": 0.001, "val_interval": 4})
    assert (parsed["max_epochs"], parsed["val_interval"], parsed["learning_rate"]) == (40, 4, 0.001)
    # fewer epochs than the validation interval: validated at the last one (weights are saved only after one)
    assert trainer.parse_request({"model": FAST, "max_epochs": 3})["val_interval"] == 3
    for option, value in (("learning_rate", 2.0), ("max_epochs", 0), ("val_interval", 1.5), ("max_epochs", "$x")):
        with pytest.raises(OptionError, match=option):
            trainer.parse_request({"model": FAST, option: value})


# ------------------------------------------------------------------------------------------- where a run starts


def run_overrides(trainer, request) -> dict:
    """The overrides a request gives the bundle run (the run itself replaced by a recorder)."""
    ran = []
    trainer.run_single_gpu = lambda request, overrides: ran.append(overrides)
    trainer({"model": trainer.bundle.name, **CHEAP, **request}, OneImage())
    (overrides,) = ran
    return overrides


def loaders(overrides) -> list[str]:
    return [h["load_path"] for h in overrides["train#handlers"] if h.get("_target_") == "CheckpointLoader"]


def test_an_interrupted_run_is_resumed_a_finished_one_fine_tuned(tmp_path):
    bundle = copy_bundle(tmp_path)
    checkpoint, weights = bundle / "models" / "checkpoint.pt", bundle / "models" / "model.pt"
    assert not run_overrides(trainer_for(bundle), {}).get("resume")  # nothing saved: from scratch
    assert loaders(run_overrides(trainer_for(bundle), {})) == []
    weights.parent.mkdir()
    torch.save({"w": torch.zeros(1)}, weights)
    assert loaders(run_overrides(trainer_for(bundle), {})) == [str(weights)]

    save_checkpoint(checkpoint, epoch=3, planned=20)  # stopped at 3 of 20
    overrides = run_overrides(trainer_for(bundle), {})
    assert overrides["resume"] is True and loaders(overrides) == []  # everything from the checkpoint, not model.pt
    assert overrides["train#trainer#max_epochs"] == overrides["epochs"] == 20
    assert run_overrides(trainer_for(bundle), {"max_epochs": 10})["resume"] is True
    for request in ({"max_epochs": 3}, {"pretrained": False}):  # nothing left to do; a fresh start asked for
        assert not run_overrides(trainer_for(bundle), request).get("resume")
    assert loaders(run_overrides(trainer_for(bundle), {"pretrained": False})) == []  # MONAI Label's own crashes here

    save_checkpoint(checkpoint, epoch=20, planned=20)  # finished
    overrides = run_overrides(trainer_for(bundle), {})
    assert not overrides.get("resume") and loaders(overrides) == [str(weights)]
    checkpoint.write_bytes(b"not a checkpoint")
    assert not run_overrides(trainer_for(bundle), {}).get("resume")


def test_few_labels_validate_on_the_training_cases_and_none_is_an_error(tmp_path):
    trainer = trainer_for(copy_bundle(tmp_path))
    overrides = run_overrides(trainer, {"val_split": 0.2})
    assert overrides["validate#dataset#data"] == overrides["train#dataset#data"] == OneImage().datalist()

    class Empty:
        def datalist(self):
            return []

    with pytest.raises(ValueError, match="no saved labels"):
        trainer({"model": FAST, **CHEAP}, Empty())


def test_a_resumed_run_takes_the_epoch_length_of_its_data_now(tmp_path):
    """Labels saved after the interruption: the resumed epochs run over all of the data, not the old count."""
    from ignite.engine import Engine, Events

    from custom_nets.handlers import TrainingCheckpoint, training_progress

    checkpoint = tmp_path / "checkpoint.pt"
    model = torch.nn.Linear(1, 1)

    def trainer(data, resume, stop_at=None):
        engine = Engine(lambda engine, batch: None)
        TrainingCheckpoint(checkpoint, {"model": model}, resume=resume).attach(engine)
        if stop_at:
            engine.add_event_handler(Events.EPOCH_COMPLETED(once=stop_at), lambda e: e.terminate())
        seen = []
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.iteration)))
        engine.run(data, max_epochs=4)
        return seen

    trainer([0] * 3, resume=False, stop_at=2)
    assert training_progress(checkpoint) == (2, 4)
    seen = trainer([0] * 5, resume=True)
    assert [epoch for epoch, _ in seen] == [3] * 5 + [4] * 5
    assert seen[-1] == (4, 20) and training_progress(checkpoint) == (4, 4)
    torch.save({"w": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="no trainer state"):
        training_progress(tmp_path / "weights.pt")


# --------------------------------------------------------------------------------- through the server, as Slicer


def spleen_label(path: Path) -> Path:
    seg = nib.load(SMALL_SEG)
    nib.save(nib.Nifti1Image((np.asarray(seg.dataobj).round() == 1).astype(np.uint8), seg.affine), path)
    return path


def log_since(server: LabelServer, offset: int) -> str:
    return server.log.read_bytes()[offset:].decode(errors="replace")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about 3 minutes on 2 quiet cores; 15 and more on a shared machine
def test_a_server_killed_during_training_loses_nothing_and_the_run_goes_on_from_its_checkpoint(tmp_path):
    """As Slicer drives it: the defaults shown, an untrained model refused, a label saved, a training run; then the
    server and its training SIGKILLed (the worst case: no clean-up runs), restarted, and nothing saved is lost: the
    label, the datastore, the weights and the checkpoint; the next Train resumes the run, the one after fine-tunes
    and Slicer's Stop ends it."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    from custom_nets.handlers import training_progress

    bundles = tmp_path / "bundles"
    bundle = copy_bundle(bundles)
    checkpoint, weights = bundle / "models" / "checkpoint.pt", bundle / "models" / "model.pt"
    studies = tmp_path / "studies"
    studies.mkdir()
    server = LabelServer(studies, {"bundles": str(bundles)}, tmp_path / "server.log").start()
    try:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
        assert client.info()["models"][FAST]["trained"] is False
        client.upload_image(str(SMALL_CT), image_id="ct")
        with pytest.raises(MONAILabelClientException) as untrained:
            client.infer(FAST, "ct", {"result_extension": ".nii.gz", "result_dtype": "uint8"})
        assert "Status: 409" in str(untrained.value) and "no trained weights" in str(untrained.value), untrained.value
        client.save_label("ct", str(spleen_label(tmp_path / "label.nii.gz")), tag="final")
        label = studies / "labels" / "final" / "ct.nii.gz"
        label_digest = digest(label)

        shown = client.info()["trainers"][FAST]["config"]
        assert (shown["max_epochs"], shown["val_interval"], shown["learning_rate"]) == (20, 5, 0.003)
        with pytest.raises(MONAILabelClientException, match="learning_rate"):
            client.train_start(FAST, {**shown, "learning_rate": 5})

        # Slicer sends every option it shows back, edited: 5 epochs, validated (and weights saved) every second
        options = {**shown, **CHEAP, "max_epochs": 5, "val_interval": 2}
        client.train_start(FAST, options)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if weights.is_file() and checkpoint.is_file() and training_progress(checkpoint)[0] >= 2:
                break
            time.sleep(0.5)
        server.kill()
        stopped, planned = training_progress(checkpoint)
        assert 2 <= stopped < planned == 5, server.log_tail()

        server.start()  # on a new port
        offset = server.log.stat().st_size
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
        assert digest(label) == label_digest
        assert client.datastore()["objects"]["ct"]["labels"]["final"]
        state = torch.load(weights, weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())
        assert training_progress(checkpoint) == (stopped, 5)
        mask_path, _ = client.infer(FAST, "ct", {"result_extension": ".nii.gz", "result_dtype": "uint8"})
        assert nib.load(mask_path).shape == nib.load(SMALL_CT).shape
        assert requests.get(f"{server.url}/train/", timeout=30).json().get("status") != "RUNNING"

        client.train_start(FAST, options)
        status = server.wait_for_training(1500)
        log = log_since(server, offset)
        assert status["status"] == "DONE", log[-4000:]
        assert f"resuming the training stopped at epoch {stopped}/5" in log
        assert f"Restored all variables from {checkpoint}" in log
        epochs = [int(line.split("Epoch: ")[1].split("/")[0]) for line in log.splitlines() if "Epoch: " in line]
        assert epochs[0] == stopped + 1 and epochs[-1] == 5, epochs
        assert training_progress(checkpoint) == (5, 5) and weights.is_file()
        curves = (bundle / "eval" / "curves.csv").read_text().splitlines()
        assert [int(row.split(",")[0]) for row in curves[1:]] == list(range(1, 6))  # the whole run, both parts

        # a finished run is not resumed: the next Train fine-tunes from model.pt; Slicer's Stop ends it after an epoch
        offset = server.log.stat().st_size
        client.train_start(FAST, {**CHEAP, "max_epochs": 20})
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and training_progress(checkpoint)[1] != 20:
            time.sleep(0.5)
        client.train_stop()
        assert server.wait_for_training(60)["status"] != "DONE"
        log = log_since(server, offset)
        assert "resuming the training" not in log and f"Add Checkpoint Loader for Path: {weights}" in log
        finished, planned = training_progress(checkpoint)
        assert 1 <= finished < planned == 20, log[-4000:]
        assert requests.get(f"{server.url}/info/", timeout=30).ok
    finally:
        server.stop()
