"""What a bundle says by its own files, and what the command line and the label app read from them: the BraTS label
map is the BraTS bundle's postprocessing (``RegionsToLabelsd``, its labels named in ``output_labels``), and the
app's scoring and strategy names come from the scoring classes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from custom_nets.bundle import Bundle, InferencePipeline, find_bundle
from custom_nets.io import InputError

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "segresmamba"
BRATS = "brats21_mri_segresmamba"
BRATS_LABELS = {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4}


def test_regions_to_labels_paints_in_order_and_keeps_the_geometry():
    from monai.data import MetaTensor

    from custom_nets.bundle.transforms import RegionsToLabelsd

    rng = np.random.default_rng(0)
    regions = rng.random((3, 6, 5, 4)) > 0.5  # overlapping TC, WT, ET, also where they contradict each other
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    paint = RegionsToLabelsd("pred", paint=[[1, 2], [0, 1], [2, 4]])
    labels = paint({"pred": MetaTensor(torch.as_tensor(regions, dtype=torch.float32), affine=affine)})["pred"]
    tc, wt, et = regions
    expected = np.where(et, 4, np.where(tc, 1, np.where(wt, 2, 0)))[None]
    assert isinstance(labels, MetaTensor) and labels.dtype == torch.uint8 and tuple(labels.shape) == (1, 6, 5, 4)
    np.testing.assert_array_equal(labels.numpy(), expected)
    np.testing.assert_array_equal(labels.affine.numpy(), affine.numpy())
    np.testing.assert_array_equal(paint({"pred": regions.astype(np.float32)})["pred"], expected)  # numpy in, out
    for bad in ([], [[0, 0]], [[0, 256]], [[-1, 1]], [[0, 1.5]], [[0, True]], [[0]]):
        with pytest.raises(ValueError, match="paint takes"):
            RegionsToLabelsd("pred", paint=bad)
    with pytest.raises(ValueError, match="pred has 3 channel"):
        RegionsToLabelsd("pred", paint=[[3, 1]])({"pred": regions})


def test_bundles_name_the_labels_of_their_masks():
    assert find_bundle(BRATS).labels == BRATS_LABELS  # its inference config's output_labels
    assert find_bundle("spleen_ct_segresmamba").labels == {"spleen": 1}  # its metadata's channel_def
    config = json.loads((find_bundle(BRATS).config_file("inference")).read_text())
    (step,) = [t for t in config["postprocessing"]["transforms"] if t["_target_"].endswith("RegionsToLabelsd")]
    assert {value for _, value in step["paint"]} == set(config["output_labels"].values())


def brats_copy(tmp_path: Path, edit) -> Bundle:
    folder = tmp_path / "brats"
    shutil.copytree(find_bundle(BRATS).path, folder)
    config_file = folder / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    edit(config)
    config_file.write_text(json.dumps(config))
    return Bundle.at(folder)


def test_the_pipeline_checks_the_label_map_against_its_names(tmp_path):
    """Checked before the weights are read: a missing weights file is the next complaint when they agree."""
    small = {"feature_size": 8}
    missing = tmp_path / "missing.pt"

    def rename(config):
        config["output_labels"] = {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 3}

    with pytest.raises(InputError, match=r"RegionsToLabelsd paints \[1, 2, 4\] but its output_labels name \[1, 2, 3\]"):
        InferencePipeline(brats_copy(tmp_path / "a", rename), "cpu", small, weights=missing)

    def step_after_the_label_map(config):  # its savers aside, a call could not stop before the label map alone
        config["postprocessing"]["transforms"].insert(-1, {"_target_": "SqueezeDimd", "keys": "pred", "dim": 0})

    with pytest.raises(InputError, match="postprocessing must end with its RegionsToLabelsd"):
        InferencePipeline(brats_copy(tmp_path / "b", step_after_the_label_map), "cpu", small, weights=missing)
    with pytest.raises(InputError, match="weights file not found"):
        InferencePipeline(find_bundle(BRATS), "cpu", small, weights=missing)


@pytest.fixture(scope="module")
def app_lib():
    sys.path.insert(0, str(APP))
    yield
    sys.path.remove(str(APP))


def test_label_app_serves_the_bundles_label_map(app_lib, tmp_path):
    from fastapi import HTTPException
    from monai.transforms import SqueezeDimd

    from custom_nets.bundle.transforms import RegionsToLabelsd
    from lib.infers import BundleSegmentation

    task = BundleSegmentation(brats_copy(tmp_path, lambda config: config.update(feature_size=8)))
    assert task.labels == BRATS_LABELS
    *_, label_map, squeeze = task.post_transforms()
    assert isinstance(label_map, RegionsToLabelsd) and isinstance(squeeze, SqueezeDimd)
    with pytest.raises(HTTPException) as refused:  # no weights: the public run_inferer says so
        task.run_inferer({"image": torch.zeros(1, 4, 8, 8, 8)}, device="cpu")
    assert refused.value.status_code == 409 and "has no trained weights" in refused.value.detail


def test_scoring_and_strategy_names_come_from_the_scoring_classes(app_lib):
    from lib.activelearning import MostUncertain
    from lib.scoring import ModelDice, TTAUncertainty

    assert ModelDice.method_name("m") == "dice_m" and TTAUncertainty.method_name("m") == "tta_uncertainty_m"
    strategy = MostUncertain("m")
    assert strategy.name == TTAUncertainty.method_name("m")

    class Datastore:
        info = {
            "a": {TTAUncertainty.key: {"m": {TTAUncertainty.headline: 0.1}}},
            "b": {TTAUncertainty.key: {"m": {TTAUncertainty.headline: 0.7}, "other": {"score": 9.0}}},
            "c": {},
        }

        def get_unlabeled_images(self):
            return list(self.info)

        def get_image_info(self, image_id):
            return self.info[image_id]

    assert strategy.ranked(Datastore()) == [("b", 0.7), ("a", 0.1), ("c", None)]
    assert strategy({"strategy": strategy.name}, Datastore()) == {"id": "b", TTAUncertainty.key: 0.7}


def test_tta_scoring_takes_the_bundles_own_activation(app_lib, tmp_path, monkeypatch):
    """BraTS's regions overlap (sigmoid per channel), the spleen's classes do not (softmax): the uncertainty score is
    the entropy of the bundle's own probabilities, averaged over the flips."""
    import math

    from lib.infers import BundleSegmentation
    from lib.scoring import TTAUncertainty

    task = BundleSegmentation(brats_copy(tmp_path, lambda config: config.update(feature_size=8)))
    scoring = TTAUncertainty(task)
    assert scoring.kind == "sigmoid"
    logits = torch.zeros(1, 3, 4, 5, 6)
    logits[:, 0] = 2.0  # the first region is sure-ish everywhere, the others undecided (p = 0.5)
    monkeypatch.setattr(task, "pre_transforms", lambda data=None: [lambda d: {"image": torch.zeros(4, 4, 5, 6)}])
    monkeypatch.setattr(task, "run_inferer", lambda data, convert_to_batch=True, device="cpu": {"pred": logits})
    p = 1 / (1 + math.exp(-2.0))
    expected = -(p * math.log(p) + (1 - p) * math.log(1 - p)) + 2 * math.log(2)
    assert scoring.score("unused", "cpu") == pytest.approx(expected, rel=1e-5)

    spleen = BundleSegmentation(find_bundle("spleen_ct_segresmamba_fast"))
    assert TTAUncertainty(spleen).kind == "softmax"
