"""The annotator's loop with the fast spleen bundle, through the label app as 3D Slicer drives it: a Train click on
five labelled CTs with the bundle's own defaults, then Run on the whole shipped CT and its Dice against the label.

    nice -n 10 python -m benchmarks.label_fast [--out=benchmarks/results/label_fast] [--budget_s=1800]

Only two real CT cases ship (``data/README.md``), both from one patient: the whole abdominal CT (122x101x112, 3 mm)
and its slices 82..111, each labelled by TotalSegmentator. The five labelled images are made from them:

- ``ct``: the whole CT, its spleen from TotalSegmentator's v1 label map;
- ``ct_sm``: the shipped small CT (slices 82..111), its spleen from TotalSegmentator's v2 label map;
- ``ct_top``: slices 48..111 of the whole CT (the upper abdomen), its label cropped alike;
- ``ct_noise``: the whole CT plus Gaussian noise (sigma 20 HU, seeded), the same label;
- ``ct_contrast``: the whole CT with intensities x1.1 - 10 HU (another contrast), the same label.

A server on 127.0.0.1 (a free port) serves a copy of ``bundles/spleen_ct_segresmamba_fast`` without weights. The
Train click sends the trainer's options as ``/info`` shows them (what Slicer sends when nothing is edited: the
bundle's ``finetune`` defaults, 20 epochs); its time runs from the request to the status DONE (polled every second;
the training process's start-up, data caching and validations included). Then ``/infer`` on ``ct`` twice (the
first loads the new weights), and the Dice of the returned mask against ``ct``'s label: agreement with
TotalSegmentator on an image the model was trained on, a check of the loop, not a measure of accuracy.

Beside each wall time, the CPU seconds the server and the training processes it started spent on it (all cores
added up): on a machine shared with other work, wall times grow with the load and CPU seconds much less.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.report import environment, write_atomic

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "totalseg_ct_abdomen"
MODEL = "spleen_ct_segresmamba_fast"
SPLEEN = 1  # TotalSegmentator's label value
TARGETS = {"infer_s": 10.0, "train_s": 300.0, "dice": 0.8}


def labelled_cases(folder: Path) -> dict[str, tuple[Path, Path]]:
    """The five labelled CTs described above, as NIfTI files in ``folder``: name -> (image, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = nib.load(DATA / "example_ct.nii.gz")
    spleen = nib.Nifti1Image((np.rint(np.asarray(nib.load(DATA / "example_ct_seg_total_v1.nii.gz").dataobj)) == SPLEEN)
                             .astype(np.uint8), ct.affine)
    small = nib.load(DATA / "example_ct_sm.nii.gz")
    small_spleen = nib.Nifti1Image((np.rint(np.asarray(nib.load(DATA / "example_ct_sm_seg_total_v2.nii.gz").dataobj))
                                    == SPLEEN).astype(np.uint8), small.affine)
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0.0, 20.0, hu.shape).astype(np.float32)
    images = {
        "ct": (ct, spleen),
        "ct_sm": (small, small_spleen),
        "ct_top": (ct.slicer[:, :, 48:], spleen.slicer[:, :, 48:]),
        "ct_noise": (nib.Nifti1Image(np.rint(hu + noise).astype(np.int16), ct.affine), spleen),
        "ct_contrast": (nib.Nifti1Image(np.rint(hu * 1.1 - 10).astype(np.int16), ct.affine), spleen),
    }
    cases = {}
    for name, (image, label) in images.items():
        cases[name] = (folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz")
        nib.save(image, cases[name][0])
        nib.save(label, cases[name][1])
    return cases


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of the children it has waited for (the server's finished training processes)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def dice(mask: np.ndarray, label: np.ndarray) -> float:
    mask, label = mask > 0, label > 0
    return float(2 * (mask & label).sum() / max(1, mask.sum() + label.sum()))


def epoch_times(log: str) -> list[float]:
    """Seconds of each epoch, from ignite's "Epoch[n] Complete. Time taken: hh:mm:ss.fff" lines."""
    times = []
    for h, m, s in re.findall(r"Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", log):
        times.append(round(int(h) * 3600 + int(m) * 60 + float(s), 2))
    return times


def render(results: dict) -> str:
    env, train, infer = results["environment"], results["train"], results["infer"]
    rows = [
        ("Run: whole shipped CT (122x101x112), first call after training",
         f"{infer[0]['wall_s']} s ({infer[0]['cpu_s']} CPU-s)", f"<= {TARGETS['infer_s']:g} s"),
        ("Run: the same again (weights loaded)", f"{infer[1]['wall_s']} s ({infer[1]['cpu_s']} CPU-s)",
         f"<= {TARGETS['infer_s']:g} s"),
        (f"Train click: {train['cases']} labelled CTs, {train['max_epochs']} epochs",
         f"{train['wall_s']} s ({train['cpu_s']} CPU-s)", f"<= {TARGETS['train_s']:g} s"),
        ("Dice of Run's mask against the CT's label", f"{results['dice']:.3f}", f">= {TARGETS['dice']:g}"),
    ]
    lines = [
        "# The annotator's loop with the fast spleen bundle (label app, CPU)",
        "",
        f"{env['date']}, commit {env['git_commit'][:7]}, {env['cpu']} x {env['cpu_count']} cores, torch threads "
        f"{env['torch_threads']}, nice {results['conditions']['nice']}, load average "
        f"{results['conditions']['load_before']} before and {results['conditions']['load_after']} after.",
        "",
        "| step | measured | target |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Training options sent (as /info shows them): max_epochs {train['max_epochs']}, val_interval "
        f"{train['val_interval']}, learning_rate {train['learning_rate']}; epochs took "
        f"{min(train['epoch_s'], default=0)} to {max(train['epoch_s'], default=0)} s "
        f"(median {train['epoch_median_s']} s). Cases: {', '.join(results['cases'])} (see the module's docstring).",
        "",
    ]
    return "\n".join(lines)


def run(out: str | None = None, budget_s: float = 1800.0) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from label_server import LabelServer
    from monailabel.client import MONAILabelClient

    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        bundles, studies = folder / "bundles", folder / "studies"
        studies.mkdir()
        shutil.copytree(ROOT / "bundles" / MODEL, bundles / MODEL, ignore=shutil.ignore_patterns("models", "eval"))
        cases = labelled_cases(folder / "cases")
        server = LabelServer(studies, {"bundles": str(bundles), "models": MODEL}, folder / "server.log")
        server.start()
        try:
            client = MONAILabelClient(server.url, tmpdir=str(folder))
            for name, (image, label) in cases.items():
                client.upload_image(str(image), image_id=name)
                client.save_label(name, str(label), tag="final")
            options = client.info()["trainers"][MODEL]["config"]
            offset = server.log.stat().st_size
            began, cpu = time.perf_counter(), tree_cpu_s(server.process.pid)
            client.train_start(MODEL, options)
            status = server.wait_for_training(budget_s)
            train_s = round(time.perf_counter() - began, 1)
            train_cpu_s = round(tree_cpu_s(server.process.pid) - cpu, 1)
            log = server.log.read_bytes()[offset:].decode(errors="replace")
            if status.get("status") != "DONE":
                raise RuntimeError(f"training ended {status.get('status')}:\n{log[-4000:]}")
            infer = []
            for _ in range(2):
                began, cpu = time.perf_counter(), tree_cpu_s(server.process.pid)
                mask_path, params = client.infer(MODEL, "ct", {"result_extension": ".nii.gz", "result_dtype": "uint8"})
                infer.append({"wall_s": round(time.perf_counter() - began, 2),
                              "cpu_s": round(tree_cpu_s(server.process.pid) - cpu, 2), "server": params["latencies"]})
            mask = np.asarray(nib.load(mask_path).dataobj).squeeze()
            label = np.asarray(nib.load(cases["ct"][1]).dataobj)
            if mask.shape != label.shape:
                raise RuntimeError(f"mask {mask.shape} is not on the CT's grid {label.shape}")
            score = dice(mask, label)
        finally:
            server.stop()
    epochs = epoch_times(log)
    results = {
        "environment": environment("cpu"),
        "conditions": {"nice": os.nice(0), "load_before": load_before,
                       "load_after": [round(x, 2) for x in os.getloadavg()]},
        "model": MODEL,
        "cases": sorted(cases),
        "targets": TARGETS,
        "train": {"cases": len(cases), "max_epochs": options["max_epochs"], "val_interval": options["val_interval"],
                  "learning_rate": options["learning_rate"], "wall_s": train_s, "cpu_s": train_cpu_s, "epoch_s": epochs,
                  "epoch_median_s": float(np.median(epochs)) if epochs else None},
        "infer": infer,
        "dice": round(score, 4),
        "met": {"infer": infer[0]["wall_s"] <= TARGETS["infer_s"], "train": train_s <= TARGETS["train_s"],
                "dice": score >= TARGETS["dice"]},
    }
    out_dir = Path(out) if out else ROOT / "benchmarks" / "results" / "label_fast"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "results.json", json.dumps(results, indent=2))
    write_atomic(out_dir / "results.md", render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    import fire

    fire.Fire(run)
