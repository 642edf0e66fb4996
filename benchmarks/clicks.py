"""Clicks help: Dice of a click-guided (DeepEdit) bundle on a CT it was not trained on, against the number of clicks.

    python -m benchmarks.clicks run [--bundle=spleen_ct_segresmamba_deepedit_fast] [--epochs=80] [--out=...]
    python -m benchmarks.clicks latency [--bundle=spleen_ct_segresmamba_deepedit_fast] [--repeats=3] [--out=...]

``run`` trains the bundle with its own ``train.json`` (simulated clicks: MONAI's DeepEdit ``Interaction``) on the
shipped abdominal CT (``data/totalseg_ct_abdomen/example_ct.nii.gz``) with its TotalSegmentator label map, the
organs mapped to the bundle's labels by name (``*_labels.json``), and evaluates it on the other shipped CT, the
DICOM series of ``data/totalseg_ct_dicom`` (its TotalSegmentator label resampled onto the series' grid through
world coordinates, nearest neighbour). For every organ of the bundle present in both cases, the standard NoC
protocol: start without clicks, then click at the centre of the largest error region
(``custom_nets.interactive.next_click``: a foreground click of the organ where it was missed, a background click
where it was wrongly added), clicks accumulating; Dice after 0, 1, 3, 5 and 10 clicks. The labels are
TotalSegmentator's (a model's, not an expert's): Dice here is agreement with that model.

``run --weights=model.pt`` measures weights trained elsewhere instead; the training options are refused beside it
(the record names the weights, not a recipe this run did not follow).

``latency`` times one click-guided inference of the whole shipped CT through the MONAI Label app, as 3D Slicer
sends it (``MONAILabelClient.infer`` with a spleen click), the bundle's trained weights from ``run`` when they are
there (the time does not depend on the weights' values).

Results go to ``benchmarks/results/clicks/`` (``results.json``, ``results.md``, ``dice_vs_clicks.png``), written
atomically.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import environment, write_atomic
from custom_nets.bundle.options import Flag, Nullable, Number, ValueRejected
from custom_nets.io.atomic import atomic_output

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CT = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct.nii.gz"
TRAIN_LABELS = ROOT / "data" / "totalseg_ct_abdomen" / "example_ct_seg_total_v1.nii.gz"
TEST_CT = ROOT / "data" / "totalseg_ct_dicom" / "dicom"
TEST_LABELS = ROOT / "data" / "totalseg_ct_dicom" / "example_seg_dicom_total_v2.nii.gz"
OUT = ROOT / "benchmarks" / "results" / "clicks"
WORK = ROOT / "outputs" / "clicks"  # the training's datalist, label, checkpoints and weights (not committed)
CLICKS = (0, 1, 3, 5, 10)
DEFAULT_EPOCHS = 80
# the bundles' (BTCV's) organ names -> TotalSegmentator's
TOTALSEG_NAMES = {
    "spleen": "spleen",
    "right kidney": "kidney_right",
    "left kidney": "kidney_left",
    "gallbladder": "gallbladder",
    "esophagus": "esophagus",
    "liver": "liver",
    "stomach": "stomach",
    "aorta": "aorta",
    "inferior vena cava": "inferior_vena_cava",
    "portal vein and splenic vein": "portal_vein_and_splenic_vein",
    "pancreas": "pancreas",
    "right adrenal gland": "adrenal_gland_right",
    "left adrenal gland": "adrenal_gland_left",
}


def bundle_label_map(seg_file: Path, label_names: dict[str, int], others_from: int | None = None):
    """A TotalSegmentator label map with its organs renumbered to ``label_names``, and its affine. Other structures
    are cleared, or with ``others_from`` kept under ``others_from`` + their TotalSegmentator value (the label map
    that ``PromptAnyStructured`` picks structures from)."""
    import nibabel as nib

    seg = nib.load(str(seg_file))
    values = np.asarray(seg.dataobj).round().astype(np.int32)
    names = json.loads(Path(str(seg_file).replace(".nii.gz", "_labels.json")).read_text())["labels_present"]
    by_name = {name: int(value) for value, name in names.items()}
    mapped = np.zeros(values.shape, dtype=np.uint8)
    if others_from is not None:
        if others_from + values.max() > np.iinfo(mapped.dtype).max:
            raise ValueError(f"TotalSegmentator values up to {values.max()} do not fit above {others_from}")
        others = values > 0
        mapped[others] = others_from + values[others]
    for label, value in label_names.items():
        source = by_name.get(TOTALSEG_NAMES.get(label, ""))
        if value and source is not None:
            mapped[values == source] = value
    return mapped, seg.affine


def resample_nearest(values: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray) -> np.ndarray:
    """``values`` (on ``affine``'s grid) sampled at the voxel centres of the grid ``shape``/``target_affine``."""
    index = np.indices(shape).reshape(3, -1)
    world = target_affine @ np.vstack([index, np.ones(index.shape[1])])
    source = np.rint((np.linalg.inv(affine) @ world)[:3]).astype(int)
    inside = np.all((source >= 0) & (source < np.array(values.shape)[:, None]), axis=0)
    out = np.zeros(index.shape[1], dtype=values.dtype)
    out[inside] = values[tuple(source[:, inside])]
    return out.reshape(shape)


def train(bundle, work: Path, epochs: int, num_samples: int | None = None, resume: bool = False,
          prompt_any_structure: float = 0.0, deepgrow_probability: float | None = None,
          prompt_structures: int | None = None) -> Path:
    """The bundle trained on the shipped abdominal CT with its own train.json (``num_samples``: crops per epoch, by
    default the bundle's; ``resume``: go on from the training checkpoint in ``work`` up to ``epochs``;
    ``prompt_any_structure``: the share of crops whose target is any TotalSegmentator structure, picked at random,
    see ``custom_nets.interactive.PromptAnyStructured``; ``prompt_structures``: how many structures such a crop
    takes, by default the bundle's; ``deepgrow_probability``: the share of iterations with simulated clicks, by
    default the bundle's); returns the weights file. Validation takes the bundle's labels."""
    import nibabel as nib
    from monai.bundle import run as run_bundle

    labels = {"train_label.nii.gz": 100 if prompt_any_structure else None, "val_label.nii.gz": None}
    for name, others_from in labels.items():
        mapped, affine = bundle_label_map(TRAIN_LABELS, bundle.click_labels, others_from)
        with atomic_output(work / name, suffix=".nii.gz") as temporary:
            nib.save(nib.Nifti1Image(mapped, affine), str(temporary))
    datalist = work / "datalist.json"
    write_atomic(datalist, json.dumps({
        "training": [{"image": str(TRAIN_CT), "label": str(work / "train_label.nii.gz")}],
        "validation": [{"image": str(TRAIN_CT), "label": str(work / "val_label.nii.gz")}],
    }))
    options = {"num_samples": num_samples, "deepgrow_probability_train": deepgrow_probability,
               "prompt_structures": prompt_structures}
    run_bundle(
        "training", config_file=[str(bundle.config_file("train"))], bundle_root=str(work), datalist_file=str(datalist),
        epochs=epochs, val_interval=epochs, num_workers=0, cache_rate=1.0, resume=resume,
        prompt_any_structure=prompt_any_structure, **{k: v for k, v in options.items() if v is not None},
    )
    return work / "models" / "model.pt"


def crop_recipe(train_config) -> dict:
    """The training crop of a bundle's parsed ``train.json``: its transform and how it picks crop centres (``pos`` and
    ``neg``, or ``ratios`` by label class, ``None`` meaning every class present alike)."""
    for index, transform in enumerate(train_config["train#random_transforms"]):
        target = transform.get("_target_", "") if isinstance(transform, dict) else ""
        if target.startswith("RandCropBy"):
            return {"transform": target, **{key: train_config.get_parsed_content(f"train#random_transforms#{index}#{key}")
                                            for key in ("pos", "neg", "ratios") if key in transform}}
    return {"transform": None}


def noc_curve(pipeline, label: str, truth: np.ndarray, max_clicks: int) -> list[dict]:
    """Dice of ``label`` after 0..``max_clicks`` NoC clicks on the test CT (see the module's docstring)."""
    from custom_nets.interactive import next_click

    value = pipeline.bundle.click_labels[label]
    clicks: dict[str, list[list[int]]] = {name: [] for name in pipeline.bundle.click_labels}
    curve = []
    for count in range(max_clicks + 1):
        prediction = pipeline(str(TEST_CT), clicks=clicks)
        predicted = prediction.mask[0] == value
        overlap = 2.0 * np.logical_and(predicted, truth).sum()
        dice = float(overlap / max(predicted.sum() + truth.sum(), 1))
        curve.append({"clicks": count, "dice": round(dice, 4),
                      "clicks_placed": {k: list(map(list, v)) for k, v in clicks.items() if v}})
        print(f"{label}: {count} clicks, Dice {dice:.4f}", flush=True)
        spacing = np.linalg.norm(prediction.affine[:3, :3], axis=0)
        click = next_click(predicted, truth, spacing)
        if click is None or count == max_clicks:
            break
        voxel, foreground = click
        clicks[label if foreground else "background"].append(list(voxel))
    while len(curve) <= max_clicks:  # perfect agreement: further clicks change nothing
        curve.append({**curve[-1], "clicks": len(curve)})
    return curve


def run(bundle: str = "spleen_ct_segresmamba_deepedit_fast", epochs: int | None = None, num_samples: int | None = None,
        out: str | None = None, weights: str | None = None, work: str | None = None, resume: bool = False,
        prompt_any_structure: float = 0.0, deepgrow_probability: float | None = None,
        prompt_structures: int | None = None) -> dict:
    """Train (unless ``weights`` are given) and measure Dice against clicks; see the module's docstring and
    ``train`` for the options."""
    import torch

    from custom_nets.bundle import InferencePipeline, find_bundle
    from custom_nets.handlers.training_checkpoint import training_progress

    # they become overrides of the bundle's train.json, which evaluates strings: parsed into their types first
    epochs = Nullable(Number(int, 0, low_open=True)).parse("--epochs", epochs)
    num_samples = Nullable(Number(int, 0, low_open=True)).parse("--num_samples", num_samples)
    prompt_any_structure = Number(float, 0, 1).parse("--prompt_any_structure", prompt_any_structure)
    deepgrow_probability = Nullable(Number(float, 0, 1)).parse("--deepgrow_probability", deepgrow_probability)
    prompt_structures = Nullable(Number(int, 1)).parse("--prompt_structures", prompt_structures)
    resume = Flag(strings=True).parse("--resume", resume)  # fire passes "--resume true" on as a string
    if weights:
        recipe = {"--epochs": epochs, "--num_samples": num_samples, "--resume": resume,
                  "--prompt_any_structure": prompt_any_structure, "--deepgrow_probability": deepgrow_probability,
                  "--prompt_structures": prompt_structures}
        given = [flag for flag, value in recipe.items() if value]
        if given:
            raise ValueRejected("--weights", "no training options beside it (nothing is trained)", given)
    chosen = find_bundle(bundle)
    out_dir = Path(out) if out else OUT
    work = Path(work).resolve() if work else WORK / chosen.name  # the datalist lists paths inside it
    work.mkdir(parents=True, exist_ok=True)
    epochs = epochs or DEFAULT_EPOCHS
    # a resumed run's recipe (this one's options, the bundle's crop) holds from the checkpoint's epoch on only
    resumed_from = training_progress(work / "models" / "checkpoint.pt")[0] if resume and not weights else None
    started = time.perf_counter()
    trained = Path(weights) if weights else train(chosen, work, epochs, num_samples, resume, prompt_any_structure,
                                                  deepgrow_probability, prompt_structures)
    train_s = time.perf_counter() - started
    train_config = chosen.parser("train")
    pipeline = InferencePipeline(chosen, torch.device("cpu"), weights=trained)
    pipeline.set_window_progress(False)
    probe = pipeline(str(TEST_CT))
    mapped, affine = bundle_label_map(TEST_LABELS, chosen.click_labels)
    truth = resample_nearest(mapped, affine, probe.mask.shape[1:], probe.affine)
    train_truth, _ = bundle_label_map(TRAIN_LABELS, chosen.click_labels)
    organs = [name for name, value in chosen.click_labels.items()
              if value and (truth == value).any() and (train_truth == value).any()]
    curves = {organ: noc_curve(pipeline, organ, truth == chosen.click_labels[organ], max(CLICKS)) for organ in organs}
    trained_on = {"image": str(TRAIN_CT.relative_to(ROOT)), "labels": str(TRAIN_LABELS.relative_to(ROOT))}
    results = {
        "environment": environment("cpu"),
        "bundle": chosen.name,
        # weights trained elsewhere: their recipe is not this run's to record
        "train": {**trained_on, "weights": str(weights)} if weights else
                 {**trained_on, "epochs": epochs, "seconds": round(train_s, 1),
                  "num_samples": num_samples or train_config["num_samples"], "resumed_from_epoch": resumed_from,
                  "crop": crop_recipe(train_config),
                  "prompt_any_structure": prompt_any_structure,
                  "prompt_structures": train_config.get("prompt_structures", 1)
                  if prompt_structures is None else prompt_structures,
                  "deepgrow_probability": train_config["deepgrow_probability_train"]
                  if deepgrow_probability is None else deepgrow_probability},
        "test": {"image": str(TEST_CT.relative_to(ROOT)), "labels": str(TEST_LABELS.relative_to(ROOT)),
                 "voxels_per_organ": {organ: int((truth == chosen.click_labels[organ]).sum()) for organ in organs}},
        "protocol": "NoC: each click at the centre of the largest error region (foreground if missed, background "
                    "if wrongly added), clicks accumulating; labels are TotalSegmentator's",
        "dice": {organ: {str(c["clicks"]): c["dice"] for c in curve if c["clicks"] in CLICKS}
                 for organ, curve in curves.items()},
        "curves": curves,
    }
    save(results, out_dir / chosen.name)
    return results


def save(results: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "results.json", json.dumps(results, indent=2))
    trained = results["train"]
    if "weights" in trained:
        origin = f"Weights `{trained['weights']}`, trained outside this run (their recipe is not recorded here)"
    else:
        resumed_from = trained.get("resumed_from_epoch")
        span = (f"epochs {resumed_from + 1} to {trained['epochs']} (resumed from a checkpoint of epoch {resumed_from}, "
                f"whose earlier recipe is not recorded here)" if resumed_from is not None else f"{trained['epochs']} epochs")
        crop = trained.get("crop", {})
        centres = ("crop centres by label class, " + ("every class alike" if crop.get("ratios") is None
                                                       else f"ratios {crop['ratios']}") + "; "
                   if crop.get("transform") == "RandCropByLabelClassesd" else "")
        origin = (f"Trained on `{trained['image']}` ({span} of {trained['num_samples']} crops, "
                  f"{trained['seconds']} s{' for the resumed part' if resumed_from is not None or trained.get('resumed') else ''}; {centres}"
                  f"any-structure prompts in {trained.get('prompt_any_structure', 0.0):.0%} of the crops "
                  f"(up to {trained.get('prompt_structures', 1)} structures each), "
                  f"simulated clicks in {trained.get('deepgrow_probability', 0.5):.0%} of the iterations)")
    lines = [f"# Dice against clicks: {results['bundle']}", "",
             f"{origin}, evaluated on `{results['test']['image']}`; {results['protocol']}.", "",
             "| organ | " + " | ".join(f"{c} clicks" for c in CLICKS) + " |",
             "|---|" + "---:|" * len(CLICKS)]
    for organ, dice in results["dice"].items():
        lines.append(f"| {organ} | " + " | ".join(f"{dice[str(c)]:.3f}" for c in CLICKS) + " |")
    write_atomic(folder / "results.md", "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for organ, curve in results["curves"].items():
        axis.plot([c["clicks"] for c in curve], [c["dice"] for c in curve], marker="o", label=organ)
    axis.set_xlabel("clicks")
    axis.set_ylabel("Dice vs TotalSegmentator")
    axis.set_ylim(0, 1)
    axis.set_title(results["bundle"])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_output(folder / "dice_vs_clicks.png", suffix=".png") as temporary:
        figure.savefig(temporary, dpi=90)
    plt.close(figure)


def latency(bundle: str = "spleen_ct_segresmamba_deepedit_fast", repeats: int = 3, out: str | None = None,
            weights: str | None = None) -> dict:
    """Wall time of click-guided inferences of the whole shipped CT through the app (see the module's docstring)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from label_server import LabelServer
    from monailabel.client import MONAILabelClient

    from custom_nets.bundle import find_bundles
    from custom_nets.interactive import next_click

    out_dir = (Path(out) if out else OUT) / bundle
    spleen = bundle_label_map(TRAIN_LABELS, {"spleen": 1})[0] == 1
    trained = Path(weights) if weights else WORK / bundle / "models" / "model.pt"
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        bundles, studies = folder / "bundles", folder / "studies"
        studies.mkdir()
        shutil.copytree(ROOT / "bundles" / bundle, bundles / bundle, ignore=shutil.ignore_patterns("models", "eval"))
        chosen = find_bundles(bundles)[bundle]
        (chosen.path / "models").mkdir()
        if trained.is_file():
            shutil.copy(trained, chosen.weights)
        else:
            torch.save(chosen.parser("inference").get_parsed_content("network_def").state_dict(), chosen.weights)
        server = LabelServer(studies, {"bundles": str(bundles), "models": bundle}, folder / "server.log").start()
        try:
            client = MONAILabelClient(server.url, tmpdir=str(folder))
            client.upload_image(str(TRAIN_CT), image_id="ct")
            click, _ = next_click(np.zeros(spleen.shape, dtype=bool), spleen)  # the spleen's innermost voxel
            params = {"result_extension": ".nrrd", "result_dtype": "uint8", "label": "spleen",
                      "spleen": [list(click)], "background": []}
            timings = []
            for _ in range(repeats + 1):  # the first call loads the weights
                began = time.perf_counter()
                _, answer = client.infer(bundle, "ct", params)
                timings.append({"wall_s": round(time.perf_counter() - began, 2), "server": answer["latencies"]})
        finally:
            server.stop()
    measured = [t["wall_s"] for t in timings[1:]]
    results = {"environment": environment("cpu"), "bundle": bundle, "image": str(TRAIN_CT.relative_to(ROOT)),
               "trained_weights": trained.is_file(), "first_call": timings[0], "calls": timings[1:],
               "median_wall_s": statistics.median(measured)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "latency.json", json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=2))
    return results


if __name__ == "__main__":
    import fire

    fire.Fire({"run": run, "latency": latency})
