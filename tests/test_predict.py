"""``segresmamba predict`` with the project's bundles: masks line up with their images in world coordinates (NIfTI,
NRRD and DICOM inputs; NIfTI and DICOM SEG outputs), and bad input gets a one-line error and leaves no file.

Geometry is checked with threshold "networks" (a 1x1x1 convolution loaded from models/model.pt like any weights):
their masks are known functions of the input intensities, so each mask can be compared with the image it came from,
voxel by voxel in world coordinates, through references read independently of MONAI (nibabel; ITK pixels with
geometry from the DICOM tags or ITK's origin, spacing and direction). A randomly initialised small SegResMamba runs
through the command line as users type it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from conftest import DATA
from custom_nets.cli import predict, predict_command
from custom_nets.io import InputError

pytestmark = pytest.mark.filterwarnings("ignore:builtin type")  # ITK's SWIG types, on import

ROOT = Path(__file__).resolve().parents[1]
CT = DATA / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"
DICOM = DATA / "totalseg_ct_dicom" / "dicom"
DICOM_LABELS = DATA / "totalseg_ct_dicom" / "example_seg_dicom_total_v2.nii.gz"  # array axes not in DICOM order
NRRD = DATA / "pyradiomics_brain_tumor" / "brain2_image.nrrd"
SPLEEN = 1  # label value in TotalSegmentator's label map
# The spleen bundle scales HU [-57, 164] to [0, 1]; its threshold network marks x > 0.5, i.e. HU > 53.5.
SPLEEN_THRESHOLD = 53.5
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


# ---------------------------------------------------------------------------------------------- references


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def sample(volume: np.ndarray, affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Nearest-neighbour values of ``volume`` (spatial axes first, then any channels) at RAS ``world`` points
    ``(..., 3)``; 0 outside."""
    voxel = np.rint(world @ np.linalg.inv(affine)[:3, :3].T + np.linalg.inv(affine)[:3, 3]).astype(int)
    inside = np.all((voxel >= 0) & (voxel < volume.shape[:3]), axis=-1)
    out = np.zeros(world.shape[:-1] + volume.shape[3:], dtype=volume.dtype)
    out[inside] = volume[voxel[inside, 0], voxel[inside, 1], voxel[inside, 2]]
    return out


def voxel_centres(shape, affine: np.ndarray) -> np.ndarray:
    """RAS world coordinates ``(*shape, 3)`` of every voxel of a grid."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def itk_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image read with ITK: ``(array (x, y, z), voxel-to-RAS affine)`` from ITK's own origin, spacing and
    direction (LPS)."""
    image = itk.imread(str(path))
    array = itk.array_from_image(image).transpose(2, 1, 0)  # ITK's numpy view is (z, y, x)
    direction = itk.array_from_matrix(image.GetDirection())
    affine = np.eye(4)
    affine[:3, :3] = (direction * np.asarray(image.GetSpacing())) * LPS_TO_RAS[:, None]
    affine[:3, 3] = np.asarray(image.GetOrigin()) * LPS_TO_RAS
    return array, affine


def dicom_slices(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per DICOM file: ``(pixels (rows, columns), RAS world coordinates of the pixel centres (rows, columns, 3))``,
    the geometry from the file's own tags (ImagePositionPatient, ImageOrientationPatient, PixelSpacing)."""
    slices = []
    for file in sorted(folder.iterdir()):
        header = pydicom.dcmread(file, stop_before_pixels=True)
        pixels = itk.array_from_image(itk.imread(str(file)))[0]  # JPEG 2000: decoded by ITK's GDCM
        position = np.asarray(header.ImagePositionPatient, float)
        orientation = np.asarray(header.ImageOrientationPatient, float)
        row_spacing, column_spacing = (float(s) for s in header.PixelSpacing)
        rows, columns = np.meshgrid(np.arange(header.Rows), np.arange(header.Columns), indexing="ij")
        world = (
            position
            + columns[..., None] * column_spacing * orientation[:3]
            + rows[..., None] * row_spacing * orientation[3:]
        )
        slices.append((pixels, world * LPS_TO_RAS))
    return slices


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden temporary files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- bundles


def bundle_copy(name: str, target: Path, network_def: dict | None = None, state: dict | None = None) -> Path:
    """A copy of ``bundles/<name>`` (without weights), its network replaced by ``network_def`` when given, and
    ``state`` saved as models/model.pt when given."""
    shutil.copytree(ROOT / "bundles" / name, target, ignore=shutil.ignore_patterns("models", "eval", "*.pt"))
    if network_def is not None:
        config_file = target / "configs" / "inference.json"
        config = json.loads(config_file.read_text())
        config["network_def"] = network_def
        config_file.write_text(json.dumps(config, indent=4))
    if state is not None:
        (target / "models").mkdir()
        torch.save(state, target / "models" / "model.pt")
    return target


def threshold_net(weight: list[list[float]], bias: list[float]) -> tuple[dict, dict]:
    """A 1x1x1 convolution as a bundle ``network_def`` and its state dict: output o = sum_i w[o][i] x_i + b[o]."""
    weight = torch.tensor(weight, dtype=torch.float32)
    out_channels, in_channels = weight.shape
    network_def = {"_target_": "torch.nn.Conv3d", "in_channels": in_channels, "out_channels": out_channels,
                   "kernel_size": 1}  # fmt: skip
    return network_def, {"weight": weight[..., None, None, None], "bias": torch.tensor(bias)}


@pytest.fixture(scope="session")
def spleen_threshold_bundle(tmp_path_factory) -> Path:
    """The spleen bundle with a network whose label 1 is "scaled intensity > 0.5" (HU > 53.5)."""
    network_def, state = threshold_net([[-1.0], [1.0]], [0.5, -0.5])
    return bundle_copy("spleen_ct_segresmamba", tmp_path_factory.mktemp("bundles") / "spleen", network_def, state)


@pytest.fixture(scope="session")
def spleen_masks(spleen_threshold_bundle, tmp_path_factory) -> dict[str, Path]:
    """One run over a folder holding the CT (NIfTI), the brain MRI (NRRD) and the CT DICOM series."""
    cases = tmp_path_factory.mktemp("cases")
    (cases / "ct.nii.gz").symlink_to(CT)
    (cases / "brain.nrrd").symlink_to(NRRD)
    (cases / "ct_dicom").symlink_to(DICOM, target_is_directory=True)
    output = tmp_path_factory.mktemp("masks")
    written = predict(str(spleen_threshold_bundle), str(cases), str(output), device="cpu")
    return {Path(p).name.split("_seg")[0]: Path(p) for p in written}


# ---------------------------------------------------------------------------------------------- geometry


def test_one_mask_per_input(spleen_masks):
    assert sorted(p.name for p in spleen_masks.values()) == ["brain_seg.nii.gz", "ct_dicom_seg.nii.gz", "ct_seg.nii.gz"]
    assert files_in(next(iter(spleen_masks.values())).parent) == sorted(p.name for p in spleen_masks.values())


def test_nifti_ct_mask_lines_up(spleen_masks):
    mask = nib.load(spleen_masks["ct"])
    image = nib.load(CT)
    assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
    world = voxel_centres(image.shape, image.affine)
    got = sample(np.asarray(mask.dataobj), mask.affine, world) == 1
    assert dice(got, image.get_fdata() > SPLEEN_THRESHOLD) > 0.9



def test_nrrd_mask_lines_up(spleen_masks):
    mask = nib.load(spleen_masks["brain"])
    image, affine = itk_reference(NRRD)
    assert mask.shape == image.shape == (256, 256, 23)
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
    got = sample(np.asarray(mask.dataobj), mask.affine, voxel_centres(image.shape, affine)) == 1
    assert dice(got, image > SPLEEN_THRESHOLD) > 0.9


def test_dicom_series_mask_lines_up(spleen_masks):
    mask = nib.load(spleen_masks["ct_dicom"])
    assert mask.shape == (512, 512, 20)
    data = np.asarray(mask.dataobj)
    got, expected = zip(*[(sample(data, mask.affine, world) == 1, pixels > SPLEEN_THRESHOLD)
                          for pixels, world in dicom_slices(DICOM)])  # fmt: skip
    assert dice(np.stack(got), np.stack(expected)) > 0.9

    # TotalSegmentator's label map of this series stores its arrays flipped: only world coordinates compare.
    # This scan is contrast-enhanced: its spleen lies above the threshold.
    labels = nib.load(DICOM_LABELS)
    spleen = np.asarray(labels.dataobj).astype(int) == SPLEEN
    inside = sample(data, mask.affine, voxel_centres(labels.shape, labels.affine))[spleen]
    assert (inside == 1).mean() > 0.9


def test_dicom_seg_output(spleen_threshold_bundle, spleen_masks, tmp_path):
    (written,) = predict(str(spleen_threshold_bundle), str(DICOM), str(tmp_path), output_format="dicom_seg")
    assert written == str(tmp_path / "dicom_seg.dcm") and files_in(tmp_path) == ["dicom_seg.dcm"]
    seg = pydicom.dcmread(written)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["spleen"]
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(DICOM.iterdir())]
    assert referenced == {s.file_meta.MediaStorageSOPInstanceUID for s in sources}

    # every frame sits on a source slice (by position) and holds that slice's mask; frames left out are empty
    frames = {
        tuple(np.round(group.PlanePositionSequence[0].ImagePositionPatient, 3)): seg.pixel_array[i] > 0
        for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence)
    }
    positions = [tuple(np.round(np.asarray(s.ImagePositionPatient, float), 3)) for s in sources]
    assert set(frames) <= set(positions) and len(frames) > 0
    nifti = nib.load(spleen_masks["ct_dicom"])
    got, expected = [], []
    for position, (pixels, world) in zip(positions, dicom_slices(DICOM)):
        frame = frames.get(position, np.zeros(pixels.shape, bool))
        np.testing.assert_array_equal(frame, sample(np.asarray(nifti.dataobj), nifti.affine, world) == 1)
        got.append(frame)
        expected.append(pixels > SPLEEN_THRESHOLD)
    assert dice(np.stack(got), np.stack(expected)) > 0.9


def test_multichannel_bundle_lines_up(tmp_path):
    """BraTS: four channels in (a 4D NIfTI), three overlapping sigmoid masks out, as a 4D NIfTI (--brats_regions)."""
    brain, affine = itk_reference(NRRD)
    brain = brain.astype(np.float32)
    channels = np.stack([brain, brain**2, np.sqrt(brain), brain], axis=-1)  # (x, y, z, 4)
    nib.save(nib.Nifti1Image(channels, affine), tmp_path / "case.nii.gz")
    # output k = normalised input channel k + 1, less a margin: the normalisation leaves zero voxels at 0, and the
    # bundle's 0.5 threshold on the sigmoid keeps 0 (a tie no trained network's logit hits)
    margin = 1e-3
    network_def, state = threshold_net([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], [-margin] * 3)
    bundle = bundle_copy("brats21_mri_segresmamba", tmp_path / "brats", network_def, state)
    (written,) = predict(str(bundle), str(tmp_path / "case.nii.gz"), str(tmp_path / "out"), brats_regions=True)
    mask = nib.load(written)
    assert mask.shape == (*brain.shape, 3)
    got = sample(np.asarray(mask.dataobj), mask.affine, voxel_centres(brain.shape, affine))
    for k in range(3):
        foreground = channels[..., k + 1][channels[..., k + 1] != 0]
        expected = channels[..., k + 1] > foreground.mean() + margin * foreground.std()
        assert dice(got[..., k] == 1, expected) > 0.99


# ---------------------------------------------------------------------------------------------- bad input


def write_truncated_copy(source: Path, target: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def dicom_with_damaged_slice(target: Path) -> Path:
    """The DICOM series with one slice's pixel data cut off (its header intact)."""
    shutil.copytree(DICOM, target)
    for file in target.iterdir():
        file.chmod(0o644)
    victim = sorted(target.iterdir())[5]
    write_truncated_copy(victim, victim, keep=0.05)
    return target


def two_channel_nifti(target: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), target)
    return target


BAD_INPUTS = {
    "missing-input": (lambda d: d / "nowhere.nii.gz", "input not found"),
    "empty-folder": (lambda d: (d / "empty").mkdir() or d / "empty", "no usable image"),
    "garbage-nifti": (lambda d: (d / "x.nii.gz").write_bytes(os.urandom(3000)) and d / "x.nii.gz", "cannot read NIfTI"),
    "truncated-nifti": (lambda d: write_truncated_copy(CT, d / "ct.nii.gz"), "cannot load .*ct.nii.gz"),
    "damaged-dicom-slice": (lambda d: dicom_with_damaged_slice(d / "series"), r"series loads as \(512, 512, 19\)"),
    "two-channel-image": (lambda d: two_channel_nifti(d / "two.nii.gz"), "has 2 channel.*expects 1"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_refused_and_leaves_nothing(spleen_threshold_bundle, tmp_path, case):
    make, message = BAD_INPUTS[case]
    source = make(tmp_path)
    output = tmp_path / "out"
    with pytest.raises(InputError, match=message) as error:
        predict(str(spleen_threshold_bundle), str(source), str(output), progress=False)
    assert "\n" not in str(error.value)
    assert files_in(output) == []


def test_bad_bundles_and_options_are_refused(spleen_threshold_bundle, tmp_path):
    output = tmp_path / "out"
    cases = [
        (dict(bundle="no_such_bundle"), "bundle not found: no_such_bundle"),
        (dict(bundle=str(bundle_copy("spleen_ct_segresmamba", tmp_path / "untrained"))),
         "no trained weights .*models/model.pt is missing.*train"),
        (dict(bundle=str(bundle_copy("spleen_ct_segresmamba", tmp_path / "mismatch", state={"weight": torch.ones(1)}))),
         "do not fit the bundle's network_def"),
        (dict(output_format="dicom_seg"), "dicom_seg needs DICOM series inputs"),
        (dict(output_format="png"), "unknown output_format"),
        (dict(device="tpu"), "unknown device"),
    ]  # fmt: skip
    for options, message in cases:
        arguments = dict(bundle=str(spleen_threshold_bundle), input=str(CT), output=str(output), progress=False)
        with pytest.raises(InputError, match=message):
            predict(**{**arguments, **options})
    output_file = tmp_path / "taken"
    output_file.write_text("")
    with pytest.raises(InputError, match="output must be a folder"):
        predict(str(spleen_threshold_bundle), str(CT), str(output_file), progress=False)
    assert files_in(output) == []


def test_config_overrides_are_checked_before_they_reach_the_config(spleen_threshold_bundle, tmp_path):
    """MONAI evaluates config strings: a value from the command line is parsed into its setting's kind first."""
    planted = tmp_path / "planted"
    cases = [
        ({"sw_batch_size": f"$open({str(planted)!r}, 'w')"}, "setting sw_batch_size takes a finite number >= 0"),
        ({"network_def#_target_": "os.system"}, "unknown setting 'network_def#_target_'.* feature_size"),
        ({"amp": True}, "unknown setting 'amp'"),  # an expression in the config, not a plain setting
        ({"pixdim": [1, 2]}, r"setting pixdim takes a list of 3 numbers like \[1.5, 1.5, 2.0\]"),
        ({"feature_size": 1.5}, "setting feature_size takes a whole number, not 1.5"),
        ({"sw_overlap": -1}, "takes a finite number >= 0, not -1"),
    ]
    for overrides, message in cases:
        with pytest.raises(InputError, match=message):
            predict(str(spleen_threshold_bundle), str(CT), str(tmp_path / "out"), progress=False, **overrides)
    assert not planted.exists() and not (tmp_path / "out").exists()


def test_wrong_channel_count_for_the_bundle(tmp_path):
    network_def, state = threshold_net([[1, 0, 0, 0]] * 3, [0.0] * 3)
    bundle = bundle_copy("brats21_mri_segresmamba", tmp_path / "brats", network_def, state)
    with pytest.raises(InputError, match=r"example_ct_sm.nii.gz has 1 channel\(s\); bundle brats .*expects 4"):
        predict(str(bundle), str(CT), str(tmp_path / "out"), progress=False)
    assert files_in(tmp_path / "out") == []


def test_a_failure_keeps_finished_masks_only(spleen_threshold_bundle, tmp_path):
    """Inputs are checked from their headers first; an image whose data turns out damaged stops the run, and the
    masks finished before it stay whole."""
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "a_ct.nii.gz").symlink_to(CT)
    write_truncated_copy(CT, cases / "b_damaged.nii.gz")
    with pytest.raises(InputError, match="b_damaged"):
        predict(str(spleen_threshold_bundle), str(cases), str(tmp_path / "out"), progress=False)
    assert files_in(tmp_path / "out") == ["a_ct_seg.nii.gz"]
    assert nib.load(tmp_path / "out" / "a_ct_seg.nii.gz").shape == (122, 101, 30)


def test_command_prints_one_line_and_exits_non_zero(spleen_threshold_bundle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        predict_command(str(spleen_threshold_bundle), str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: input not found:")


# ---------------------------------------------------------------------------------------------- command line


def test_command_line_with_a_small_segresmamba(tmp_path):
    """``python -m custom_nets predict`` as users type it, with a random SegResMamba (feature_size 8) and config
    overrides on the command line; coarse spacing keeps each image within one 64^3 window on the CPU."""
    torch.manual_seed(0)
    from custom_nets import SegResMamba

    state = SegResMamba(in_channels=1, out_channels=2, feature_size=8).state_dict()
    bundle = bundle_copy("spleen_ct_segresmamba", tmp_path / "spleen", state=state)
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "ct.nii.gz").symlink_to(CT)
    (cases / "brain.nrrd").symlink_to(NRRD)
    (cases / "ct_dicom").symlink_to(DICOM, target_is_directory=True)
    command = [sys.executable, "-m", "custom_nets", "predict", "--bundle", str(bundle), "--input", str(cases),
               "--output", str(tmp_path / "out"), "--feature_size", "8", "--pixdim", "[8,8,8]",
               "--patch_size", "[64,64,64]", "--sw_batch_size", "1", "--sw_overlap", "0", "--statistics"]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "3/3" in run.stderr  # the progress bar
    assert "warn" not in run.stderr.lower()  # MONAI's warnings stay off the terminal without --verbose
    out = tmp_path / "out"
    assert files_in(out) == sorted(f"{name}_{kind}" for name in ("brain", "ct", "ct_dicom")
                                   for kind in ("seg.nii.gz", "statistics.json"))  # fmt: skip
    in_input_order = ("brain_seg.nii.gz", "ct_seg.nii.gz", "ct_dicom_seg.nii.gz")
    assert run.stdout.split() == [str(out / name) for name in in_input_order]  # fire prints the returned list

    ct = nib.load(out / "ct_seg.nii.gz")
    assert ct.shape == (122, 101, 30)
    np.testing.assert_allclose(ct.affine, nib.load(CT).affine, atol=1e-4)
    brain = nib.load(out / "brain_seg.nii.gz")
    assert brain.shape == (256, 256, 23)
    np.testing.assert_allclose(brain.affine, itk_reference(NRRD)[1], atol=1e-4)
    series = nib.load(out / "ct_dicom_seg.nii.gz")
    assert series.shape == (512, 512, 20)
    for _, world in dicom_slices(DICOM):  # every pixel centre of every slice is a voxel centre of the mask
        voxel = world @ np.linalg.inv(series.affine)[:3, :3].T + np.linalg.inv(series.affine)[:3, 3]
        assert np.abs(voxel - np.rint(voxel)).max() < 1e-3
        assert np.all((np.rint(voxel) >= 0) & (np.rint(voxel) < series.shape))
    for mask in (ct, brain, series):
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    statistics = json.loads((out / "ct_statistics.json").read_text())
    assert statistics["labels"]["spleen"]["voxels"] == int((np.asarray(ct.dataobj) == 1).sum())


# ---------------------------------------------------------------------------------------------- options

# A coarse grid keeps the CT within one 96^3 window: the option tests check what the options add, not geometry.
COARSE = {"pixdim": [3.0, 3.0, 4.0]}
CT_NAME = "example_ct_sm"


def hu_to_spleen_probability(hu: np.ndarray) -> np.ndarray:
    """The spleen threshold network's softmax of label 1 for CT values: softmax([0.5 - x, x - 0.5])[1] =
    sigmoid(2x - 1), with x the bundle's scaled intensity."""
    x = np.clip((hu + 57.0) / 221.0, 0.0, 1.0)
    return 1.0 / (1.0 + np.exp(-(2.0 * x - 1.0)))


@pytest.fixture(scope="session")
def weights_files(tmp_path_factory) -> tuple[Path, Path]:
    """The spleen threshold bundle without weights, and a folder with its weights as a plain state dict and as a
    training checkpoint (model, optimizer, epoch)."""
    network_def, state = threshold_net([[-1.0], [1.0]], [0.5, -0.5])
    folder = tmp_path_factory.mktemp("weights")
    bundle = bundle_copy("spleen_ct_segresmamba", folder / "spleen", network_def)
    torch.save(state, folder / "plain.pt")
    optimizer = torch.optim.SGD(torch.nn.Conv3d(1, 2, 1).parameters(), lr=0.1)
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "epoch": 3}, folder / "checkpoint.pt")
    return bundle, folder


def test_weights_from_a_file_outside_the_bundle(weights_files, spleen_masks, tmp_path):
    bundle, folder = weights_files
    reference = np.asarray(nib.load(spleen_masks["ct"]).dataobj)
    for name in ("plain", "checkpoint"):
        weights = str(folder / f"{name}.pt")
        (written,) = predict(str(bundle), str(CT), str(tmp_path / name), progress=False, weights=weights)
        np.testing.assert_array_equal(np.asarray(nib.load(written).dataobj), reference)
    assert not (bundle / "models").exists()


def test_bad_weights_files_are_refused(weights_files, tmp_path, capsys):
    bundle, folder = weights_files
    torch.save(threshold_net([[1.0], [1.0], [1.0]], [0.0, 0.0, 0.0])[1], tmp_path / "three_classes.pt")
    (tmp_path / "notes.txt").write_text("not weights\n")
    torch.save([1, 2, 3], tmp_path / "a_list.pt")
    torch.save({"model": {"weight": "text"}}, tmp_path / "no_tensors.pt")
    cases = {
        "three_classes.pt": r"do not fit the bundle's network_def: size mismatch for weight: .*\[3, 1, 1, 1, 1\]",
        "notes.txt": "notes.txt is not a PyTorch weights file",
        "a_list.pt": "a_list.pt holds no state dict",
        "no_tensors.pt": "no_tensors.pt holds no state dict",
        "missing.pt": "weights file not found: .*missing.pt",
    }
    output = tmp_path / "out"
    for name, message in cases.items():
        with pytest.raises(InputError, match=message) as error:
            predict(str(bundle), str(CT), str(output), progress=False, weights=str(tmp_path / name))
        assert "\n" not in str(error.value)
    with pytest.raises(SystemExit):
        predict_command(str(bundle), str(CT), str(output), weights=str(tmp_path / "notes.txt"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert files_in(output) == []


def test_probabilities_statistics_and_preview(spleen_threshold_bundle, tmp_path):
    """One run with every extra output: the softmax maps on the CT's grid, the spleen's volume, a PNG."""
    import matplotlib.image

    from custom_nets.io import overlay_slices

    written = predict(str(spleen_threshold_bundle), str(CT), str(tmp_path), progress=False, save_probabilities=True,
                      statistics=True, preview=True, **COARSE)  # fmt: skip
    assert written == [str(tmp_path / f"{CT_NAME}_seg.nii.gz")]
    assert files_in(tmp_path) == sorted(f"{CT_NAME}_{s}" for s in ("seg.nii.gz", "probabilities.nii.gz",
                                                                   "statistics.json", "preview.png"))  # fmt: skip
    image = nib.load(CT)
    mask_file = nib.load(written[0])
    mask = np.asarray(mask_file.dataobj)

    probabilities = nib.load(tmp_path / f"{CT_NAME}_probabilities.nii.gz")
    assert probabilities.shape == (*image.shape, 2) and probabilities.get_data_dtype() == np.float32
    np.testing.assert_allclose(probabilities.affine, image.affine, atol=1e-4)
    p = probabilities.get_fdata()
    total = p.sum(-1)
    inside = total > 0.5  # the bundle crops to the body (CropForegroundd): outside it every map is 0
    np.testing.assert_allclose(total[inside], 1.0, atol=1e-5)
    np.testing.assert_allclose(total[~inside], 0.0, atol=1e-6)
    np.testing.assert_array_equal(mask, np.where(inside, p.argmax(-1), 0))
    expected = hu_to_spleen_probability(image.get_fdata())
    assert np.median(np.abs(p[..., 1] - expected)[inside]) < 0.02  # resampled to 3 mm and back

    statistics = json.loads((tmp_path / f"{CT_NAME}_statistics.json").read_text())
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    assert statistics["image"] == CT_NAME and statistics["voxel_volume_ml"] == pytest.approx(voxel_ml, rel=1e-5)
    spleen = statistics["labels"]["spleen"]
    assert spleen["value"] == 1 and spleen["voxels"] == int((mask == 1).sum()) > 0
    assert spleen["volume_ml"] == pytest.approx(spleen["voxels"] * voxel_ml, rel=1e-5)

    png = matplotlib.image.imread(tmp_path / f"{CT_NAME}_preview.png")  # an independent PNG decoder
    canonical = (nib.as_closest_canonical(i) for i in (image, mask_file))  # RAS order, by nibabel
    expected_png = overlay_slices(*(np.asarray(i.dataobj) for i in canonical))
    assert png.shape == expected_png.shape and png.shape[0] >= 256
    np.testing.assert_array_equal(np.rint(png[..., :3] * 255).astype(np.uint8), expected_png)


def test_preview_slices_show_the_mask_in_place():
    """Radiological view of RAS arrays: anterior up, the patient's right (low x) on the right of the picture."""
    from custom_nets.io import overlay_slices, to_ras
    from custom_nets.io.preview import PALETTE

    image = np.zeros((6, 4, 5), np.float32)
    image[..., :] = np.arange(6)[:, None, None]  # brighter towards the patient's right
    labels = np.zeros((6, 4, 5), np.uint8)
    labels[1, 0, 2] = 2  # on the patient's left, posterior, in the middle slice
    sheet = overlay_slices(image, labels, count=1, alpha=0.5, min_height=8)
    scale = 2
    assert sheet.shape == (4 * scale, (6 + 2) * scale, 3)
    pixel = sheet[(4 - 1 - 0) * scale, (6 - 1 - 1 + 1) * scale]  # bottom row; tile column 0 is padding
    grey = np.clip((1 - np.percentile(image, 0.5)) / (np.percentile(image, 99.5) - np.percentile(image, 0.5)), 0, 1)
    np.testing.assert_array_equal(pixel, np.round(0.5 * grey * 255 + 0.5 * PALETTE[1]).astype(np.uint8))
    unlabelled = sheet[(4 - 1 - 0) * scale, (6 - 1 - 4 + 1) * scale]
    assert len(set(unlabelled.tolist())) == 1  # grey

    # an LPS-ordered array (DICOM through ITK) comes to RAS order with its first two axes reversed
    lps = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(to_ras(lps, np.diag([-1.0, -1.0, 1.0, 1.0])), lps[::-1, ::-1, :])


def test_tta_averages_unflipped_probabilities():
    from custom_nets.bundle import FLIPS, flip_averaged

    torch.manual_seed(0)
    batch = torch.randn(1, 1, 5, 4, 3)
    ramp = torch.randn(1, 2, 5, 4, 3)  # a position-dependent "network": flipping its input matters
    got = flip_averaged(lambda x: x * ramp, batch, lambda logits: torch.softmax(logits, dim=1))
    # f(flip(b)) flipped back is b * flip(ramp)
    expected = sum(torch.softmax(batch * (torch.flip(ramp, d) if d else ramp), dim=1) for d in FLIPS) / len(FLIPS)
    torch.testing.assert_close(got, expected)
    assert FLIPS == ((), (2,), (3,), (4,))


def test_tta_runs_every_flip_through_the_bundle(spleen_threshold_bundle):
    """Four passes of the network; the 1x1 threshold network commutes with flips, so the mean is unchanged."""
    from custom_nets.bundle import InferencePipeline, find_bundle

    pipeline = InferencePipeline(find_bundle(str(spleen_threshold_bundle)), torch.device("cpu"), COARSE)
    calls = []
    pipeline.network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    plain = pipeline(CT, probabilities=True)
    plain_calls = len(calls)
    averaged = pipeline(CT, tta=True, probabilities=True)
    assert plain_calls > 0 and len(calls) - plain_calls == 4 * plain_calls
    np.testing.assert_allclose(averaged.probabilities, plain.probabilities, atol=1e-5)
    np.testing.assert_array_equal(averaged.mask, plain.mask)


def test_window_progress_and_quiet_warnings(spleen_threshold_bundle, tmp_path, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict(str(spleen_threshold_bundle), str(CT), str(tmp_path / "quiet"), **COARSE)
    assert [str(w.message) for w in caught] == []
    err = capsys.readouterr().err
    assert re.search(r"100%\|\S+\| (\d+)/\1 \[", err)  # the sliding windows' bar
    assert CT_NAME not in err  # no bar over a single image
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict(str(spleen_threshold_bundle), str(CT), str(tmp_path / "verbose"), progress=False, verbose=True,
                **COARSE)  # fmt: skip
    assert any("Orientationd" in str(w.message) for w in caught)  # MONAI warns about its changing default


def test_bad_options_are_refused_and_leave_nothing(spleen_threshold_bundle, tmp_path):
    config_file = spleen_threshold_bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["postprocessing"]["transforms"] = config["postprocessing"]["transforms"][1:]  # no Activationsd
    no_activation = tmp_path / "no_activation"
    shutil.copytree(spleen_threshold_bundle, no_activation)
    (no_activation / "configs" / "inference.json").write_text(json.dumps(config))
    output = tmp_path / "out"
    cases = [
        (dict(save_probabilities=True, output_format="dicom_seg", input=str(DICOM)),
         "--save_probabilities writes NIfTI maps and a DICOM SEG holds binary segments"),
        (dict(tta="yes"), "--tta is a switch"),
        (dict(statistics=2), "--statistics is a switch"),
        (dict(weights=True), "--weights takes the path of a weights file, not True"),
        (dict(brats_regions=True), "--brats_regions: bundle spleen does not predict the BraTS regions"),
        (dict(bundle=str(no_activation), tta=True), "--tta needs probabilities, but .* does not start with a softmax"),
        (dict(bundle=str(no_activation), save_probabilities=True), "--save_probabilities needs probabilities"),
    ]  # fmt: skip
    for options, message in cases:
        arguments = dict(bundle=str(spleen_threshold_bundle), input=str(CT), output=str(output), progress=False)
        with pytest.raises(InputError, match=message) as error:
            predict(**{**arguments, **options})
        assert "\n" not in str(error.value)
    assert files_in(output) == []


# ---------------------------------------------------------------------------------------------- BraTS cases

BRATS_CHANNELS = ("flair", "t1", "t1ce", "t2")  # bundles/brats21_mri_segresmamba/configs/metadata.json's order


@pytest.fixture(scope="session")
def brats_threshold_bundle(tmp_path_factory) -> Path:
    """The BraTS bundle with a network whose region k is "normalised channel k + 1 > 0" (TC from T1, WT from
    T1ce, ET from T2; FLAIR unused)."""
    network_def, state = threshold_net([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], [-1e-3] * 3)
    return bundle_copy("brats21_mri_segresmamba", tmp_path_factory.mktemp("bundles") / "brats", network_def, state)


def brats_case(folder: Path, name: str, seed: int, shape=(20, 18, 12), skip: str = "", t2_shape=None) -> np.ndarray:
    """A synthetic BraTS 2021 case folder ``<name>/<name>_<channel>.nii.gz``: a bright box in a dark border per
    channel, each channel its own pattern. Returns the channels stacked (x, y, z, 4) in the bundle's order."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    channels = np.zeros((*shape, 4), np.float32)
    channels[2:-2, 2:-2, 2:-2] = rng.uniform(1, 100, size=(shape[0] - 4, shape[1] - 4, shape[2] - 4, 4))
    (folder / name).mkdir(parents=True)
    for k, channel in enumerate(BRATS_CHANNELS):
        if channel == skip:
            continue
        data = channels[..., k] if not (channel == "t2" and t2_shape) else np.zeros(t2_shape, np.float32)
        nib.save(nib.Nifti1Image(data, affine), folder / name / f"{name}_{channel}.nii.gz")
    return channels


def test_brats_case_folders_give_the_label_map(brats_threshold_bundle, tmp_path):
    """Four files per case in, the BraTS label map (1/2/4) out by default, the three regions with --brats_regions;
    both as the 4D NIfTI of the same channels gives."""
    cases = tmp_path / "cases"
    stacked = {name: brats_case(cases, name, seed) for seed, name in enumerate(("BraTS2021_00000", "BraTS2021_00001"))}
    nib.save(nib.Nifti1Image(stacked["BraTS2021_00000"], np.eye(4)), tmp_path / "stacked.nii.gz")
    (reference,) = predict(str(brats_threshold_bundle), str(tmp_path / "stacked.nii.gz"), str(tmp_path / "ref"),
                           progress=False, brats_regions=True)  # fmt: skip
    regions = np.asarray(nib.load(reference).dataobj) > 0
    assert regions.shape == (20, 18, 12, 3) and all(regions[..., k].any() for k in range(3))
    tc, wt, et = (regions[..., k] for k in range(3))
    expected = np.zeros(tc.shape, np.uint8)
    expected[wt] = 2
    expected[tc] = 1
    expected[et] = 4

    written = predict(str(brats_threshold_bundle), str(cases), str(tmp_path / "out"), progress=False, statistics=True)
    assert written == [str(tmp_path / "out" / f"{name}_seg.nii.gz") for name in stacked]
    labels = np.asarray(nib.load(written[0]).dataobj)
    assert labels.shape == (20, 18, 12) and set(np.unique(labels)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(labels, expected)
    statistics = json.loads((tmp_path / "out" / "BraTS2021_00000_statistics.json").read_text())
    assert {name: entry["voxels"] for name, entry in statistics["labels"].items()} == {
        "necrotic tumour core": int((expected == 1).sum()),
        "peritumoral edema": int((expected == 2).sum()),
        "enhancing tumour": int((expected == 4).sum()),
    }

    # one case folder given directly, its regions asked for
    (single,) = predict(str(brats_threshold_bundle), str(cases / "BraTS2021_00000"), str(tmp_path / "regions"),
                        progress=False, brats_regions=True)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(nib.load(single).dataobj), np.asarray(nib.load(reference).dataobj))


def test_incomplete_brats_cases_are_refused(brats_threshold_bundle, tmp_path):
    brats_case(tmp_path / "missing", "case", 0, skip="t1ce")
    brats_case(tmp_path / "sizes", "case", 0, t2_shape=(20, 18, 11))
    cases = {"missing": r"case folder .*case lacks case_t1ce.nii.gz", "sizes": "files of case .* differ in size"}
    for folder, message in cases.items():
        with pytest.raises(InputError, match=message) as error:
            predict(str(brats_threshold_bundle), str(tmp_path / folder), str(tmp_path / "out"), progress=False)
        assert "\n" not in str(error.value)
    assert files_in(tmp_path / "out") == []
