"""Datalists from the MSD, BraTS 2021 and BTCV layouts; errors for wrong or incomplete folders."""

from __future__ import annotations

import json
import shutil

import pytest

from bundle_data import make_brats_tree, make_btcv_tree, make_msd_tree
from custom_nets.datasets import DatasetLayoutError, holdout_split, kfold_split, load_datalist


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {
        "msd": make_msd_tree(root / "msd", num_labelled=4, num_test=2),
        "brats21": make_brats_tree(root / "brats", num_cases=5),
        "btcv": make_btcv_tree(root / "btcv", num_cases=4),
    }


def test_msd_sections(trees):
    train = load_datalist("msd", trees["msd"], "training", num_val_cases=1)
    val = load_datalist("msd", trees["msd"], "validation", num_val_cases=1)
    test = load_datalist("msd", trees["msd"], "test")
    assert [c["image"].rsplit("/", 1)[1] for c in train] == ["spleen_0.nii.gz", "spleen_1.nii.gz", "spleen_2.nii.gz"]
    assert [c["label"] for c in val] == [str(trees["msd"] / "labelsTr" / "spleen_3.nii.gz")]
    assert [c["image"] for c in test] == [str(trees["msd"] / "imagesTs" / f"spleen_{i}.nii.gz") for i in (4, 5)]
    # num_val_cases=0: the paper's split, every labelled case trains and is scored
    assert load_datalist("msd", trees["msd"], "validation", num_val_cases=0) == load_datalist(
        "msd", trees["msd"], "training", num_val_cases=0
    )


def test_brats_folds_partition_the_cases(trees):
    folds = [load_datalist("brats21", trees["brats21"], "validation", fold=k, num_folds=5) for k in range(5)]
    assert sorted(c["label"] for fold in folds for c in fold) == sorted(
        c["label"] for c in load_datalist("brats21", trees["brats21"], "training", num_val_cases=0)
    )
    train = load_datalist("brats21", trees["brats21"], "training", fold=2, num_folds=5)
    assert len(train) == 4 and folds[2][0] not in train
    case = folds[0][0]
    name = case["label"].rsplit("/", 1)[1][: -len("_seg.nii.gz")]
    assert [p.rsplit("/", 1)[1] for p in case["image"]] == [f"{name}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]


def test_btcv_pairs_and_holdout(trees):
    val = load_datalist("btcv", trees["btcv"], "validation", num_val_cases=1)
    assert val == [{"image": str(trees["btcv"] / "img" / "img0004.nii.gz"),
                    "label": str(trees["btcv"] / "label" / "label0004.nii.gz")}]
    assert len(load_datalist("btcv", trees["btcv"], "training", num_val_cases=1)) == 3
    assert "label" not in load_datalist("btcv", trees["btcv"], "test")[0]


def test_datalist_file(tmp_path, trees):
    image = trees["msd"] / "imagesTr" / "spleen_0.nii.gz"
    label = trees["msd"] / "labelsTr" / "spleen_0.nii.gz"
    shutil.copy(image, tmp_path / "ct.nii.gz")
    shutil.copy(label, tmp_path / "ct_label.nii.gz")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "ct.nii.gz", "label": "ct_label.nii.gz"}], "test": ["ct.nii.gz"]}))
    train = load_datalist("msd", "/nonexistent", "training", datalist_file=datalist)
    assert train == [{"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "ct_label.nii.gz")}]
    assert load_datalist("msd", None, "test", datalist_file=datalist) == [{"image": str(tmp_path / "ct.nii.gz")}]
    with pytest.raises(DatasetLayoutError, match=r"no non-empty 'validation' list \(its keys: \['test', 'training'\]\)"):
        load_datalist("msd", None, "validation", datalist_file=datalist)


def _broken(tmp_path, trees, layout):
    broken = tmp_path / layout
    shutil.copytree(trees[layout], broken)
    return broken


def test_bad_folders_name_the_problem(tmp_path, trees):
    with pytest.raises(DatasetLayoutError, match=r"dataset folder .*nowhere does not exist; expected the Medical Segm"):
        load_datalist("msd", tmp_path / "nowhere", "training", num_val_cases=1)
    with pytest.raises(DatasetLayoutError, match=r"missing file .*dataset.json .*expected the Medical Segmentation Decathlon layout"):
        load_datalist("msd", tmp_path, "training", num_val_cases=1)

    msd = _broken(tmp_path, trees, "msd")
    (msd / "labelsTr" / "spleen_2.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing file .*labelsTr/spleen_2.nii.gz \(needed by .*dataset.json\)"):
        load_datalist("msd", msd, "training", num_val_cases=1)
    (msd / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetLayoutError, match=r"dataset.json is not a readable JSON file"):
        load_datalist("msd", msd, "training", num_val_cases=1)

    brats = _broken(tmp_path, trees, "brats21")
    (brats / "BraTS2021_00003" / "BraTS2021_00003_t1ce.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing file .*BraTS2021_00003_t1ce.nii.gz \(needed by case BraTS2021_00003\)"):
        load_datalist("brats21", brats, "training", fold=0)
    with pytest.raises(DatasetLayoutError, match=r"no BraTS case folders in .*expected the BraTS 2021 layout"):
        load_datalist("brats21", trees["btcv"], "training", fold=0)

    btcv = _broken(tmp_path, trees, "btcv")
    (btcv / "label" / "label0002.nii.gz").rename(btcv / "label" / "label0009.nii.gz")
    with pytest.raises(DatasetLayoutError, match=r"missing file .*label0002.nii.gz \(needed by image img0002.nii.gz\)"):
        load_datalist("btcv", btcv, "training", num_val_cases=1)
    (btcv / "img" / "img0002.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match=r"label .*label0009.nii.gz has no image img0009.nii.gz"):
        load_datalist("btcv", btcv, "training", num_val_cases=1)
    with pytest.raises(DatasetLayoutError, match=r"no img/ folder in .*expected the BTCV layout"):
        load_datalist("btcv", trees["msd"], "training", num_val_cases=1)


def test_bad_splits_name_the_problem(trees):
    with pytest.raises(DatasetLayoutError, match=r"4 labelled case\(s\) found, but num_val_cases=4 leaves none"):
        load_datalist("msd", trees["msd"], "training", num_val_cases=4)
    with pytest.raises(DatasetLayoutError, match=r"fold must be in \[0, 4\], got 5"):
        load_datalist("brats21", trees["brats21"], "training", fold=5)
    with pytest.raises(DatasetLayoutError, match=r"either num_val_cases .* or fold"):
        load_datalist("btcv", trees["btcv"], "training")
    with pytest.raises(DatasetLayoutError, match=r"unknown dataset layout 'kits'"):
        load_datalist("kits", trees["btcv"], "training", num_val_cases=1)
    with pytest.raises(DatasetLayoutError, match=r"fewer than num_folds=5"):
        kfold_split([{}] * 3, fold=0)
    assert holdout_split([1, 2, 3], 1) == ([1, 2], [3])
