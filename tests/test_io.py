"""custom_nets.io: finding inputs, reading headers, refusing bad images, writing masks atomically."""

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import DATA
from custom_nets.io import (
    ImageHeader,
    InputError,
    atomic_output,
    find_inputs,
    read_header,
    segments_of,
    write_dicom_seg,
    write_nifti_mask,
)

pytestmark = pytest.mark.filterwarnings("ignore:builtin type")  # ITK's SWIG types, on import

CT = DATA / "totalseg_ct_abdomen" / "example_ct_sm.nii.gz"
DICOM = DATA / "totalseg_ct_dicom" / "dicom"
NRRD = DATA / "pyradiomics_brain_tumor" / "brain2_image.nrrd"


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden temporary files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def writable_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for p in target.iterdir():
        p.chmod(0o644)
    return target


def test_finds_each_kind_of_input(tmp_path):
    assert [(i.format, i.name) for i in find_inputs(CT)] == [("nifti", "example_ct_sm")]
    assert [(i.format, i.name) for i in find_inputs(NRRD)] == [("nrrd", "brain2_image")]
    (series,) = find_inputs(DICOM)
    assert (series.format, series.name, len(series.dicom_files)) == ("dicom", "dicom", 20)

    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "b_ct.nii.gz").symlink_to(CT)
    (folder / "a_brain.nrrd").symlink_to(NRRD)
    (folder / "c_series").symlink_to(DICOM)
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty_dir").mkdir()
    found = find_inputs(folder)
    assert [(i.format, i.name) for i in found] == [("nrrd", "a_brain"), ("nifti", "b_ct"), ("dicom", "c_series")]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.nii.gz", "input not found"),
        (lambda d: d, "no usable image in folder"),
        (lambda d: (d / "notes.txt").write_text("x") and d, "no usable image in folder"),
        (lambda d: (d / "scan.png").write_bytes(b"\x89PNG") and d / "scan.png", "unsupported image format"),
        (lambda d: shutil.copy(next(DICOM.iterdir()), d / "slice.dcm") and d / "slice.dcm", "single DICOM file"),
    ],
    ids=["missing", "empty-folder", "folder-without-images", "unsupported-file", "single-dicom-file"],
)
def test_unusable_paths_are_refused(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        find_inputs(make(tmp_path))


def test_headers_give_size_and_channels(tmp_path):
    assert read_header(find_inputs(CT)[0]) == ImageHeader((122, 101, 30), 1)
    assert read_header(find_inputs(NRRD)[0]) == ImageHeader((256, 256, 23), 1)
    assert read_header(find_inputs(DICOM)[0]) == ImageHeader((512, 512, 20), 1)
    two_channels = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 2), np.float32), np.eye(4)), two_channels)
    assert read_header(find_inputs(two_channels)[0]) == ImageHeader((5, 6, 7), 2)


def test_damaged_images_are_refused(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(InputError, match=r"cannot read NIfTI .*garbage\.nii\.gz"):
        read_header(find_inputs(garbage)[0])

    bad_nrrd = tmp_path / "bad.nrrd"
    bad_nrrd.write_bytes(b"NRRD0004\ntype: nonsense\n\n" + os.urandom(100))
    with pytest.raises(InputError, match=r"cannot read NRRD .*bad\.nrrd"):
        read_header(find_inputs(bad_nrrd)[0])

    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.float32), np.eye(4)), flat)
    with pytest.raises(InputError, match="2 dimensions"):
        read_header(find_inputs(flat)[0])


def test_damaged_dicom_series_are_refused(tmp_path):
    broken = writable_copy(DICOM, tmp_path / "broken")
    victim = sorted(broken.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # preamble and DICM kept, the rest cut
    with pytest.raises(InputError, match=f"not a readable DICOM file: .*{victim.name}"):
        read_header(find_inputs(broken)[0])

    gap = writable_copy(DICOM, tmp_path / "gap")
    sorted(gap.iterdir())[7].unlink()
    with pytest.raises(InputError, match="not evenly spaced"):
        read_header(find_inputs(gap)[0])


def test_nifti_mask_round_trip(tmp_path):
    affine = np.array([[-0.5, 0, 0, 10], [0, 0.7, 0, -3], [0, 0, 2, 1], [0, 0, 0, 1]])
    labels = np.random.default_rng(0).integers(0, 3, size=(1, 4, 5, 6)).astype(np.float32)
    written = nib.load(write_nifti_mask(labels, affine, tmp_path / "m.nii.gz"))
    assert written.get_data_dtype() == np.uint8 and written.shape == (4, 5, 6)
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels[0])

    channels = labels.repeat(3, axis=0) > 1
    written = nib.load(write_nifti_mask(channels, affine, tmp_path / "c.nii.gz"))
    assert written.shape == (4, 5, 6, 3)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.moveaxis(channels, 0, -1))
    assert files_in(tmp_path) == ["c.nii.gz", "m.nii.gz"]
    assert (tmp_path / "m.nii.gz").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not left private (mkstemp's 0600)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "mask.nii.gz"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(target, suffix=".nii.gz") as temporary:
            temporary.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert files_in(tmp_path) == []
    with pytest.raises(ValueError, match="whole numbers"):
        write_nifti_mask(np.full((1, 2, 2, 2), 0.5), np.eye(4), target)
    assert files_in(tmp_path) == []


def test_segments_of_label_maps_and_channels():
    label_map = np.array([0, 1, 2, 2, 0, 1], dtype=np.float32).reshape(1, 1, 2, 3)
    labels, names = segments_of(label_map, {"0": "background", "1": "liver", "2": "spleen"})
    assert names == ["liver", "spleen"]
    np.testing.assert_array_equal(labels, label_map[0].astype(np.uint8))

    skipping = np.array([0, 3, 3, 0], dtype=np.float32).reshape(1, 1, 2, 2)  # label 3 becomes segment 1
    labels, names = segments_of(skipping, {"0": "background", "3": "tumour"})
    assert names == ["tumour"] and labels.max() == 1

    overlapping = np.stack([np.ones((2, 2, 2)), np.eye(2)[None].repeat(2, 0)])
    stack, names = segments_of(overlapping, {"0": "whole tumour", "1": "core"})
    assert names == ["whole tumour", "core"] and stack.dtype == bool and stack.shape == (2, 2, 2, 2)


def test_dicom_seg_needs_a_dicom_source(tmp_path):
    with pytest.raises(InputError, match="needs a DICOM series input"):
        write_dicom_seg(np.zeros((1, 2, 2, 2)), np.eye(4), find_inputs(CT)[0], tmp_path / "x.dcm")
    assert files_in(tmp_path) == []
