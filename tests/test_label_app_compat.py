"""The breakages of MONAI Label 0.8.5 with current packages, each solved in the app or by a pin, each checked."""

from __future__ import annotations

import sys

import pytest

from label_server import APP, ROOT, small_bundles

pytest.importorskip("monailabel")
CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct.nii.gz"


def test_monailabel_starts_with_the_pinned_pydicom():
    """MONAI Label imports pydicom-seg at start-up, which needs pydicom 2 (setup.cfg pins 2.4)."""
    import pydicom

    import monailabel.interfaces.app  # noqa: F401  (imports pydicom_seg)
    import pydicom_seg  # noqa: F401

    assert int(pydicom.__version__.split(".")[0]) == 2


@pytest.fixture(scope="module")
def infer_task(tmp_path_factory):
    sys.path.insert(0, str(APP))
    from custom_nets.bundle import find_bundles
    from lib.infers import BundleSegmentation

    return BundleSegmentation(find_bundles(small_bundles(tmp_path_factory.mktemp("bundles")))["spleen_ct_segresmamba"])


def test_spacingd_meets_monailabels_image_path(infer_task):
    """MONAI Label keeps the input path as data["image_path"]; MONAI 1.6's Spacingd updates every "image_*" entry
    as a metadata dict and crashes on it. The infer task keeps the path aside while its transforms run."""
    from monai.transforms import Compose

    data = {"image": str(CT), "image_path": str(CT)}
    with pytest.raises(RuntimeError, match="Spacingd") as error:
        Compose(infer_task.pre_transforms(data))(dict(data))
    assert "'str' object has no attribute 'update'" in str(error.value.__cause__)
    out = infer_task.run_pre_transforms(dict(data), infer_task.pre_transforms(data))
    assert out["image_path"] == str(CT) and out["image"].shape[0] == 1
