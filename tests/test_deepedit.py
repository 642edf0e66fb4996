"""Click-guided (DeepEdit) bundles and their clicks: configs, metadata, click parsing and mapping, NoC clicks, and
train -> evaluate -> inference with simulated clicks (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle_data import FAST_SETTINGS, make_btcv_tree, make_msd_tree
from custom_nets.bundle import find_bundle
from custom_nets.interactive import ClickError, next_click, parse_clicks

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SCHEMA = ROOT / "data" / "schemas" / "meta_schema_20240725.json"
# click-guided bundle -> the plain bundle it adds clicks to
PLAIN = {
    "spleen_ct_segresmamba_deepedit": "spleen_ct_segresmamba",
    "spleen_ct_segresmamba_deepedit_fast": "spleen_ct_segresmamba_fast",
    "btcv_ct_segresmamba_deepedit": "btcv_ct_segresmamba",
    "btcv_ct_segresmamba_deepedit_fast": "btcv_ct_segresmamba_fast",
}
FAST = {"spleen_ct_segresmamba_deepedit_fast": "spleen_ct_segresmamba_deepedit",
        "btcv_ct_segresmamba_deepedit_fast": "btcv_ct_segresmamba_deepedit"}
SPLEEN = {"spleen": 1, "background": 0}


def config(name: str, file: str) -> dict:
    return json.loads((BUNDLES / name / "configs" / file).read_text())


def test_bundles_are_found_as_click_guided_by_their_metadata():
    for name, plain in PLAIN.items():
        bundle, other = find_bundle(BUNDLES / name), find_bundle(BUNDLES / plain)
        assert bundle.click_labels == {**other.labels, "background": 0}  # plain labels, background last
        assert list(bundle.click_labels)[-1] == "background"
        assert bundle.image_channels == 1 and bundle.input_channels == 1 + len(bundle.click_labels)
        assert other.click_labels == {} and other.image_channels == other.input_channels
        assert bundle.output_channels == other.output_channels
        for file in ("train.json", "inference.json"):  # the configs' guidance channels are the metadata's
            assert config(name, file)["label_names"] == bundle.click_labels, (name, file)


@pytest.mark.parametrize("name", PLAIN)
def test_metadata_and_files_as_the_zoo_reads_them(name):
    from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

    meta_file = str(BUNDLES / name / "configs" / "metadata.json")
    verify_metadata(meta_file=meta_file, filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file=meta_file,
                      config_file=str(BUNDLES / name / "configs" / "inference.json"), any=40, feature_size=8)
    ours, plain = config(name, "metadata.json"), config(PLAIN[name], "metadata.json")
    assert ours["required_packages_version"] == plain["required_packages_version"]
    assert (BUNDLES / name / "LICENSE").read_text() == (BUNDLES / PLAIN[name] / "LICENSE").read_text()
    for file in ("logging.conf", "evaluate.json", "multi_gpu_train.json", "multi_gpu_evaluate.json"):
        assert (BUNDLES / name / "configs" / file).read_text() == (BUNDLES / PLAIN[name] / "configs" / file).read_text()
    handlers = config(name, "train.json")["train"]["handlers"]  # MONAI Label's train task reads them as dicts
    assert handlers and all(isinstance(h, dict) and "_target_" in h for h in handlers)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / name / "large_files.yml"))
    assert parser.get()["large_files"] == []  # no weights are released
    assert (BUNDLES / name / "docs" / "README.md").is_file()


@pytest.mark.parametrize("fast", FAST)
def test_fast_bundle_is_the_full_bundle_with_its_settings(fast):
    full = FAST[fast]
    for file in ("train.json", "inference.json"):
        ours, theirs = config(fast, file), config(full, file)
        assert ours.keys() == theirs.keys(), file
        assert {key for key in ours if ours[key] != theirs[key]} <= FAST_SETTINGS, file
    assert config(fast, "train.json")["pixdim"] == [3.0, 3.0, 3.0]
    fast_meta, full_meta = config(fast, "metadata.json"), config(full, "metadata.json")
    assert fast_meta["network_data_format"] == full_meta["network_data_format"]
    assert fast_meta["click_guidance"] == full_meta["click_guidance"]


@pytest.mark.parametrize("name", PLAIN)
def test_click_guided_bundle_is_its_plain_bundle_with_guidance(name):
    """The plain bundle's workflow: the same settings, preprocessing and network but for its input channels."""
    for file in ("train.json", "inference.json"):
        ours, plain = config(name, file), config(PLAIN[name], file)
        added = set(ours) - set(plain)
        assert added <= {"label_names", "guidance_sigma", "deepgrow_probability_train", "deepgrow_probability_val",
                         "prompt_any_structure", "prompt_structures", "crop_ratios"}
        same = {key for key in plain if key not in ("imports", "network_def", "train", "validate", "preprocessing",
                                                    "loss")}
        assert {key: ours[key] for key in same} == {key: plain[key] for key in same}, file
        assert {**ours["network_def"], "in_channels": 1} == plain["network_def"]
        if "loss" in plain:  # the plain bundle's, or for many organs Dice over the batch, no smoothing, plus focal
            multi_organ = {"_target_": "DiceFocalLoss", "batch": True, "smooth_nr": 0.0, "gamma": 2.0}
            assert ours["loss"] == {**plain["loss"], **(multi_organ if name.startswith("btcv") else {})}
    train = config(name, "train.json")
    assert train["train"]["trainer"]["iteration_update"] == "@train#interaction"
    assert train["train"]["interaction"]["_target_"] == "monai.apps.deepedit.interaction.Interaction"
    assert train["validate"]["evaluator"]["iteration_update"] == "@validate#interaction"
    # structures picked as targets only where a run asks for them; before the crop, which then finds them
    assert train["prompt_any_structure"] == 0.0
    assert train["train"]["random_transforms"][0]["_target_"] == "custom_nets.interactive.PromptAnyStructured"
    crop = next(t for t in train["train"]["random_transforms"] if t["_target_"].startswith("RandCropBy"))
    if name.startswith("btcv"):  # for many organs, crop centres by label class: small organs as often as the liver
        assert crop["_target_"] == "RandCropByLabelClassesd" and crop["ratios"] == "@crop_ratios"
        assert train["crop_ratios"] is None and crop["num_classes"] == "@network_def#out_channels"


def test_parse_clicks_accepts_voxel_indices_of_known_labels():
    assert parse_clicks({"spleen": [[1, 2, 3]]}, SPLEEN, (4, 4, 4)) == {"spleen": [[1, 2, 3]], "background": []}
    assert parse_clicks({}, SPLEEN) == {"spleen": [], "background": []}
    assert parse_clicks({"background": [(0, 0, 0), [3, 3, 3]]}, SPLEEN, (4, 4, 4))["background"] == [[0, 0, 0],
                                                                                                       [3, 3, 3]]


@pytest.mark.parametrize("clicks, words", [
    ({"liver": [[1, 2, 3]]}, "unknown label 'liver'"),
    ({"spleen": [[4, 2, 3]]}, "outside the image"),
    ({"spleen": [[-1, 2, 3]]}, "outside the image"),
    ({"spleen": [[1.0, 2, 3]]}, "whole numbers"),
    ({"spleen": [[True, 2, 3]]}, "whole numbers"),
    ({"spleen": [["1", 2, 3]]}, "whole numbers"),
    ({"spleen": [[1, 2]]}, "expected [i, j, k]"),
    ({"spleen": "$print(1)"}, "expected a list"),
    ({"spleen": [[1, 2, 3]] * 1001}, "at most 1000"),
])
def test_parse_clicks_refuses_bad_clicks_naming_them(clicks, words):
    with pytest.raises(ClickError, match=None) as error:
        parse_clicks(clicks, SPLEEN, (4, 4, 4))
    assert words in str(error.value)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def test_clicks_follow_orientation_spacing_and_crop(tmp_path):
    """A click given as a voxel of the image as stored lands, after the bundle's preprocessing (RAS orientation,
    3 mm spacing, foreground crop), on the same point of the patient; a background click in its own channel."""
    from monai.bundle import ConfigParser

    shape = (40, 30, 20)
    affine = np.array([[-2.0, 0, 0, 50], [0, 0, 2.5, -30], [0, -1.5, 0, 20], [0, 0, 0, 1]])  # flipped, permuted
    image = np.full(shape, 100, dtype=np.int16)
    image[:3] = -1000  # air cropped away by the foreground crop
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), path)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "spleen_ct_segresmamba_deepedit_fast" / "configs" / "inference.json"))
    preprocessing = parser.get_parsed_content("preprocessing")
    click, other = [30, 12, 7], [10, 20, 15]
    data = preprocessing({"image": str(path), "spleen": [click], "background": [other]})
    volume = data["image"]
    assert volume.shape[0] == 3 and float(volume[1:].abs().max()) > 0
    current = np.asarray(volume.affine)
    for channel, voxel in ((1, click), (2, other)):
        peak = np.unravel_index(int(np.argmax(np.asarray(volume[channel]))), volume.shape[1:])
        landed = (current @ [*peak, 1.0])[:3]
        wanted = (affine @ [*voxel, 1.0])[:3]  # both in RAS world coordinates
        assert np.linalg.norm(landed - wanted) <= 3.0 * np.sqrt(3) / 2 + 1e-6, (channel, landed, wanted)

    empty = preprocessing({"image": str(path)})["image"]  # no clicks: zero guidance, automatic segmentation
    assert empty.shape[0] == 3 and float(empty[1:].abs().max()) == 0
    with pytest.raises(Exception) as error:
        preprocessing({"image": str(path), "spleen": [[40, 0, 0]]})
    assert isinstance(_root_cause(error.value), ClickError) and "outside the image" in str(_root_cause(error.value))


def test_prompt_any_structure_picks_structures_as_targets_at_its_rate():
    from custom_nets.interactive import PromptAnyStructured

    label = np.zeros((1, 20, 20, 20), dtype=np.float32)
    label[0, :5] = 1  # the model's spleen
    label[0, 10:15] = 105  # another structure, as benchmarks.clicks keeps them (100 + TotalSegmentator's value)
    label[0, 17, :2, :2] = 107  # 4 voxels: too small to click
    names = {"spleen": 1, "background": 0}
    # an ordinary label map passes unchanged; other values are cleared
    assert np.array_equal(PromptAnyStructured("label", names)({"label": label})["label"], label * (label == 1))

    transform = PromptAnyStructured("label", names, prob=0.5)
    transform.set_random_state(0)
    targets = []
    for _ in range(200):
        out = transform({"label": label})["label"]
        assert out.dtype == label.dtype and set(np.unique(out)) == {0, 1}  # always under the spleen's value
        targets.append("spleen" if out[0, :5].all() else "other" if out[0, 10:15].all() else "?")
    # half the samples are prompted, and those pick the spleen or the other structure alike: about 3 to 1
    assert "?" not in targets and 30 <= targets.count("other") <= 70, targets.count("other")
    with pytest.raises(ValueError, match="prob"):
        PromptAnyStructured("label", names, prob=1.5)


def test_prompt_any_structure_gives_several_structures_labels_picked_at_random():
    from custom_nets.interactive import PromptAnyStructured

    label = np.zeros((1, 20, 20, 20), dtype=np.float32)
    label[0, :4] = 1  # the model's spleen
    label[0, 5:9] = 102  # three other structures
    label[0, 10:14] = 103
    label[0, 15:19] = 104
    names = {"spleen": 1, "liver": 2, "stomach": 3, "background": 0}
    transform = PromptAnyStructured("label", names, prob=1.0, structures=3)
    transform.set_random_state(0)
    spleen_took = set()
    for _ in range(100):
        out = transform({"label": label})["label"][0]
        slabs = [out[a:b] for a, b in ((0, 4), (5, 9), (10, 14), (15, 19))]
        taken = [np.unique(slab) for slab in slabs]
        assert all(len(values) == 1 for values in taken)  # a structure is taken whole, or not at all
        values = [int(values[0]) for values in taken if values[0] != 0]
        assert sorted(values) == [1, 2, 3]  # three structures, each under a label of its own
        spleen_took.add(int(taken[0][0]))
    assert spleen_took == {0, 1, 2, 3}  # the model's spleen too takes any label, or none
    # never more structures than the model has foreground labels
    out = PromptAnyStructured("label", names, prob=1.0, structures=10)({"label": label})["label"]
    assert sorted(np.unique(out).astype(int).tolist()) == [0, 1, 2, 3]
    for wrong in (0, 1.5, True):
        with pytest.raises(ValueError, match="structures"):
            PromptAnyStructured("label", names, prob=1.0, structures=wrong)


def test_click_benchmark_keeps_other_structures_above_the_bundles_labels():
    from benchmarks.clicks import TRAIN_LABELS, bundle_label_map

    names = {"spleen": 1, "liver": 6, "background": 0}
    plain, _ = bundle_label_map(TRAIN_LABELS, names)
    kept, _ = bundle_label_map(TRAIN_LABELS, names, others_from=100)
    assert set(np.unique(plain)) == {0, 1, 6}
    assert np.array_equal(kept * (kept < 100), plain)  # the bundle's organs where they were
    others = np.unique(kept[kept >= 100])
    assert len(others) > 20 and (100 + 1) not in others  # the spleen (TotalSegmentator's 1) is the bundle's, not other


@pytest.mark.parametrize("option, value, words", [
    ("epochs", "$__import__('os').getpid()", "--epochs: expected a positive int"),
    ("num_samples", "@network_def", "--num_samples: expected a positive int"),
    ("prompt_any_structure", 1.5, "--prompt_any_structure: expected a number in [0, 1]"),
    ("deepgrow_probability", "%train.json#lr", "--deepgrow_probability: expected a number in [0, 1]"),
    ("prompt_structures", "$print(1)", "--prompt_structures: expected a finite number >= 1"),
    ("resume", "yes", "--resume: expected true or false"),
])
def test_click_benchmark_parses_its_options_before_they_reach_the_bundle(option, value, words, tmp_path):
    from benchmarks.clicks import run
    from custom_nets.bundle.options import ValueRejected

    with pytest.raises(ValueRejected) as refused:
        run(**{option: value}, work=str(tmp_path / "work"), out=str(tmp_path / "out"))
    assert words in str(refused.value)
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_click_benchmark_with_given_weights_refuses_training_options(tmp_path):
    from benchmarks.clicks import run
    from custom_nets.bundle.options import ValueRejected

    with pytest.raises(ValueRejected) as refused:
        run(weights=str(tmp_path / "model.pt"), prompt_structures=13, epochs=1556, resume="true",
            out=str(tmp_path / "out"))
    assert "--weights: expected no training options beside it" in str(refused.value)
    assert all(flag in str(refused.value) for flag in ("--epochs", "--prompt_structures", "--resume"))
    assert not (tmp_path / "out").exists()


def test_click_benchmark_record_of_given_weights_claims_no_recipe(tmp_path):
    from benchmarks.clicks import save

    curve = [{"clicks": c, "dice": 0.1 * c / 10} for c in range(11)]
    results = {"bundle": "b", "protocol": "NoC",
               "train": {"image": "a.nii.gz", "labels": "l.nii.gz", "weights": "outputs/epoch1556.pt"},
               "test": {"image": "dicom"}, "dice": {"spleen": {str(c): 0.01 * c for c in (0, 1, 3, 5, 10)}},
               "curves": {"spleen": curve}}
    save(results, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "Weights `outputs/epoch1556.pt`, trained outside this run" in text
    assert "epochs" not in text and "prompts" not in text and "simulated clicks" not in text
    trained = {**results["train"], "epochs": 80, "seconds": 1.0, "num_samples": 2, "prompt_structures": 13}
    trained.pop("weights")
    save({**results, "train": trained}, tmp_path)
    assert "(80 epochs of 2 crops, 1.0 s; any-structure prompts in 0% of the crops (up to 13 structures each)" in (
        tmp_path / "results.md").read_text()
    resumed = {**trained, "epochs": 2900, "resumed_from_epoch": 1758,
               "crop": {"transform": "RandCropByLabelClassesd", "ratios": None}}
    save({**results, "train": resumed}, tmp_path)
    assert ("(epochs 1759 to 2900 (resumed from a checkpoint of epoch 1758, whose earlier recipe is not recorded "
            "here) of 2 crops, 1.0 s for the resumed part; crop centres by label class, every class alike; "
            "any-structure prompts") in (tmp_path / "results.md").read_text()


def test_click_benchmark_records_the_bundles_training_crop():
    from benchmarks.clicks import crop_recipe
    from custom_nets.bundle import find_bundle

    assert crop_recipe(find_bundle("btcv_ct_segresmamba_deepedit_fast").parser("train")) == {
        "transform": "RandCropByLabelClassesd", "ratios": None}
    assert crop_recipe(find_bundle("spleen_ct_segresmamba_deepedit_fast").parser("train")) == {
        "transform": "RandCropByPosNegLabeld", "pos": 1, "neg": 1}


def test_next_click_is_the_centre_of_the_largest_error_region():
    truth = np.zeros((20, 20, 20), dtype=bool)
    truth[2:13, 2:13, 2:13] = True  # 11^3 missed entirely: centre (7, 7, 7)
    prediction = np.zeros_like(truth)
    prediction[15:18, 15:18, 15:18] = True  # 3^3 wrongly added: smaller
    assert next_click(prediction, truth) == ((7, 7, 7), True)
    prediction = truth.copy()
    prediction[14:19, 14:19, 14:19] = True  # now the largest error is added: a background click at its centre
    assert next_click(prediction, truth) == ((16, 16, 16), False)
    assert next_click(truth, truth) is None


@pytest.mark.slow  # 9 min each on 2 shared cores (load 11-15): the guided training steps and validations
@pytest.mark.parametrize("name", FAST)
def test_train_with_simulated_clicks_evaluate_infer(name, tmp_path, monkeypatch):
    """``run training`` (MONAI's DeepEdit Interaction simulates clicks), ``run evaluating`` with the evaluation
    config and with the inference config (no clicks: automatic segmentation), on a tiny dataset."""
    from monai.bundle import run

    monkeypatch.chdir(tmp_path)
    btcv = name.startswith("btcv")
    dataset = make_btcv_tree(tmp_path / "BTCV", num_cases=2) if btcv else make_msd_tree(tmp_path / "Spleen", 2, 1)
    files = [str(BUNDLES / name / "configs" / f) for f in ("train.json", "evaluate.json", "inference.json")]
    root = tmp_path / "run"
    common = {"bundle_root": str(root), "dataset_dir": str(dataset), "num_workers": 0, "sw_batch_size": 1,
              "num_samples": 1}
    steps = {"max_steps": 1} if btcv else {"epochs": 1}
    run("training", config_file=files[:1], **common, **steps, val_interval=1, num_val_cases=1)
    assert sorted(p.name for p in (root / "models").iterdir()) == ["checkpoint.pt", "model.pt"]
    run("evaluating", config_file=files[:2], **common, num_val_cases=1)
    dice = (root / "eval" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert dice[0] == "val_mean_dice" and 0 <= float(dice[1]) <= 1
    run("evaluating", config_file=files[2:], **common)
    masks = sorted((root / "eval").glob("*_seg.nii.gz"))
    assert masks
    for mask in masks:
        values = np.asarray(nib.load(mask).dataobj)
        assert values.ndim == 3 and set(np.unique(values)) <= set(find_bundle(BUNDLES / name).click_labels.values())
