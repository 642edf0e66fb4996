"""The main job on the shipped CT: train the spleen bundle, evaluate it, segment the CT, and show the result.

Every step runs the fast spleen bundle's own configs (``bundles/spleen_ct_segresmamba_fast``: the spleen bundle with a
narrow network, the CT's own 3 mm spacing, 64^3 patches and a higher learning rate, made to fit a laptop CPU)
through MONAI's ``ConfigWorkflow``, as ``python -m monai.bundle run`` would. The one case is both the training and the
evaluation case and its label is TotalSegmentator's: the Dice reported is agreement with TotalSegmentator on the
data the model was fit to, a check that the whole pipeline works, not a measure of accuracy.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bundle import Bundle, find_bundle
from ..io.atomic import atomic_output
from . import sample_case

__all__ = ["run_demo"]

BUNDLE = "spleen_ct_segresmamba_fast"
CASE = "spleen_demo"
SPLEEN = 1  # TotalSegmentator's label value for the spleen


def _prepare_dataset(folder: Path, image_file: Path, label_file: Path) -> Path:
    """An MSD Task09-style folder holding the CT and its spleen mask, training and test entry."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = folder / "imagesTr" / f"{CASE}.nii.gz"
    with atomic_output(image, suffix=".nii.gz") as temporary:
        shutil.copyfile(image_file, temporary)
    labels = nib.load(str(label_file))
    spleen = (np.rint(np.asarray(labels.dataobj)) == SPLEEN).astype(np.uint8)
    with atomic_output(folder / "labelsTr" / f"{CASE}.nii.gz", suffix=".nii.gz") as temporary:
        nib.save(nib.Nifti1Image(spleen, labels.affine), str(temporary))
    entry = {"image": f"./imagesTr/{CASE}.nii.gz", "label": f"./labelsTr/{CASE}.nii.gz"}
    description = {
        "name": "Spleen (demo: one TotalSegmentator case)",
        "labels": {"0": "background", "1": "spleen"},
        "modality": {"0": "CT"},
        "numTraining": 1,
        "numTest": 1,
        "training": [entry],
        "test": [entry["image"]],
    }
    with atomic_output(folder / "dataset.json") as temporary:
        temporary.write_text(json.dumps(description, indent=1))
    return folder


def _workflow(bundle: Bundle, configs: list[str], workflow_type: str, **overrides):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(bundle.config_file(name)) for name in configs],
        meta_file=str(bundle.path / "configs" / "metadata.json"),
        logging_file=str(bundle.path / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    return workflow


def _attach_progress_bar(engine, description: str) -> None:
    from ignite.contrib.handlers import ProgressBar

    ProgressBar(desc=description, persist=True).attach(engine)


def _dice(mask_path: Path, label_path: Path) -> float:
    """Dice of the written mask against the label, both on the original image grid."""
    mask = np.asarray(nib.load(str(mask_path)).dataobj).squeeze() > 0
    label = np.asarray(nib.load(str(label_path)).dataobj) > 0
    if mask.shape != label.shape:
        raise RuntimeError(f"mask {mask.shape} and label {label.shape} are not on the same grid")
    return float(2 * (mask & label).sum() / (mask.sum() + label.sum()))


def _overlay_png(image_path: Path, mask_path: Path, label_path: Path, png: Path, slices: int = 4) -> None:
    """Axial slices through the spleen: CT in grey, the model's mask in red, TotalSegmentator's outline in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(mask_path)).dataobj).squeeze() > 0
    label = np.asarray(nib.load(str(label_path)).dataobj) > 0
    depths = np.flatnonzero(label.any(axis=(0, 1)))
    chosen = np.linspace(depths[0], depths[-1], slices + 2)[1:-1].astype(int) if len(depths) else [image.shape[2] // 2]
    # radiological view of the RAS arrays: patient's right on the left of the picture, anterior at the top
    image, mask, label = (np.flip(array, axis=0) for array in (image, mask, label))
    figure, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 4))
    for axis, z in zip(np.atleast_1d(axes), chosen):
        axis.imshow(np.clip((image[:, :, z].T + 160) / 400, 0, 1), cmap="gray", origin="lower")
        axis.imshow(np.ma.masked_where(~mask[:, :, z].T, mask[:, :, z].T), cmap="autumn", alpha=0.5, origin="lower")
        axis.contour(label[:, :, z].T, levels=[0.5], colors="lime", linewidths=1, origin="lower")
        axis.set_title(f"slice {z}")
        axis.axis("off")
    figure.suptitle("SegResMamba (red) vs TotalSegmentator spleen (green outline)")
    figure.tight_layout()
    with atomic_output(png, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)


def run_demo(
    output_dir: str = "outputs/demo",
    epochs: int = 80,
    crops_per_epoch: int = 2,
    patch: int | None = None,
    spacing: float | None = None,
) -> dict:
    """Train, evaluate and run the fast spleen bundle on the shipped CT; returns where everything was written.

    Args:
        output_dir: where everything is written (a relative path is below the current folder).
        epochs: training epochs, each of ``crops_per_epoch`` random patches around the spleen.
        crops_per_epoch: crops per epoch.
        patch: training patch and sliding window size (default: the bundle's, 64).
        spacing: voxel size in mm the CT is resampled to (default: the bundle's, 3).
    """
    start = time.perf_counter()
    bundle = find_bundle(BUNDLE)
    image, label_map = sample_case()
    output = Path(output_dir).resolve()
    dataset = _prepare_dataset(output / "dataset", image, label_map)
    models, predictions = output / "models", output / "predictions"
    common = dict(bundle_root=str(bundle.path), dataset_dir=str(dataset), ckpt_dir=str(models), num_workers=0)
    if patch is not None:
        common["patch_size"] = [patch] * 3
    if spacing is not None:
        common["pixdim"] = [spacing] * 3

    print(f"[1/3] training {bundle.name} on the shipped CT ({epochs} epochs of {crops_per_epoch} crops)")
    train = _workflow(bundle, ["train"], "train", epochs=epochs, num_samples=crops_per_epoch, num_val_cases=0,
                      val_interval=epochs, cache_rate=1.0,
                      output_dir=str(output / "train"), **common)
    _attach_progress_bar(train.parser.get_parsed_content("train#trainer"), "train")
    train.run()
    train.finalize()

    print("[2/3] evaluating the trained model")
    evaluate = _workflow(bundle, ["train", "evaluate"], "eval", num_val_cases=0, output_dir=str(output / "eval"),
                         **common)
    evaluator = evaluate.parser.get_parsed_content("validate#evaluator")
    _attach_progress_bar(evaluator, "evaluate")
    evaluate.run()
    metric = evaluator.state.metrics
    evaluate.finalize()

    print("[3/3] segmenting the CT")
    infer = _workflow(bundle, ["inference"], "infer", output_dir=str(predictions), **common)
    _attach_progress_bar(infer.parser.get_parsed_content("evaluator"), "inference")
    infer.run()
    infer.finalize()

    masks = sorted(predictions.rglob("*.nii.gz"))
    if len(masks) != 1:
        raise RuntimeError(f"expected one mask in {predictions}, found {len(masks)}")
    label = dataset / "labelsTr" / f"{CASE}.nii.gz"
    png = output / "overlay.png"
    _overlay_png(image, masks[0], label, png)
    result = {
        "mask": str(masks[0]),
        "overlay": str(png),
        "checkpoint_dir": str(models),
        "dice_vs_totalsegmentator": _dice(masks[0], label),
        "evaluate_metrics": {k: float(v) for k, v in metric.items()},
        "seconds": time.perf_counter() - start,
    }
    with atomic_output(output / "summary.json") as temporary:
        temporary.write_text(json.dumps(result, indent=1))
    print(
        "\nDone in {seconds:.0f} s.\n  mask:        {mask}\n  overlay PNG: {overlay}\n  weights:     {checkpoint_dir}\n"
        "  Dice of the mask vs TotalSegmentator's spleen (agreement on the training case, not accuracy): "
        "{dice_vs_totalsegmentator:.3f}\n  summary:     ".format(**result) + str(output / "summary.json")
    )
    return result
