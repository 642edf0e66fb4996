"""The label-app benchmark's inputs and log reading (the run itself is `python -m benchmarks.label_fast`)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from benchmarks.label_fast import dice, epoch_times, labelled_cases


def test_five_labelled_cases_from_the_shipped_scans(tmp_path):
    cases = labelled_cases(tmp_path)
    assert sorted(cases) == ["ct", "ct_contrast", "ct_noise", "ct_sm", "ct_top"]
    ct = np.asarray(nib.load(cases["ct"][0]).dataobj)
    for name, (image_file, label_file) in cases.items():
        image, label = nib.load(image_file), nib.load(label_file)
        assert image.shape == label.shape and np.allclose(image.affine, label.affine), name
        assert set(np.unique(np.asarray(label.dataobj))) == {0, 1}, name
    top = nib.load(cases["ct_top"][0])
    assert top.shape == (122, 101, 64) and np.array_equal(np.asarray(top.dataobj), ct[:, :, 48:])
    assert np.allclose(top.affine[:3, 3], (nib.load(cases["ct"][0]).affine @ np.array([0, 0, 48, 1]))[:3])
    noisy = np.asarray(nib.load(cases["ct_noise"][0]).dataobj).astype(float)
    assert 15 < np.std(noisy - ct) < 25  # sigma 20 HU


def test_epoch_times_and_dice():
    log = "Epoch[1] Complete. Time taken: 00:01:08.765\nother\nEpoch[12] Complete. Time taken: 01:00:01.5\n"
    assert epoch_times(log) == [68.77, 3601.5]
    mask, label = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    mask[:2], label[1:3] = 1, 1
    assert dice(mask, label) == 0.5 and dice(label, label) == 1.0
