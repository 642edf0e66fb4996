"""Network benchmark: SegResMamba against SwinUNETR, SegMamba, SegResNet, UNETR and UNet.

Commands (``python -m benchmarks.networks COMMAND --help``)::

    run     plan and run every case for a device, write results.json, results.md, memory_vs_parameters.png
            (``run --quick``: the short CPU comparison, see ``run``)
    case    run one case in this process and print its record as one JSON line (what ``run`` spawns on CPU)
    report  re-render results.md and the plot from a results.json

CPU: each case runs in fresh subprocesses: memory with ``MALLOC_MMAP_THRESHOLD_=65536`` (see
``benchmarks.memory``), time with the default malloc.
CUDA: every case runs in this process; the peak is reset before each (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from custom_nets.ops.compiled_kernel import compiled_kernels
from custom_nets.ops.cuda_kernels import cuda_scan_available

from .cases import KINDS, run_case
from .report import GIB, environment, load_results, write_results
from .zoo import MAMBA_NETWORKS, NETWORKS, TASKS

__all__ = ["ABLATIONS", "COMPARED", "case", "plan", "report", "run"]

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("segresmamba", "swinunetr", "segmamba", "segresnet", "unetr", "unet")
ABLATIONS = (
    "segresmamba_concat",
    "segresmamba_no_tom",
    "segresmamba_tom_half",
    "segresmamba_tom_full",
    "segresmamba_checkpointing",
    "segresmamba_tom_recompute",
)
SECTIONS = ("train", "ablations", "modules", "infer", "window")
# --quick: the comparison in under 30 min on 2 cores, one timed step or window per case
QUICK_NETWORKS = ("segresmamba", "segresmamba_tom_recompute", "swinunetr", "segresnet", "segmamba")
QUICK_WINDOW_NETWORKS = ("segresmamba", "segresnet", "segresmamba_bf16", "swinunetr", "segmamba")
QUICK_PATCHES = (64, 96)
# also measured with Adam's update inside the backward pass (what the bundles do without AMP). SwinUNETR's is left
# out to keep the run under 30 minutes: measured once (7a33948), the zoo's SwinUNETR peaks before most of its
# gradients exist, and its peaks were the same with it
QUICK_STEP_IN_BACKWARD = ("segresmamba", "segresmamba_tom_recompute")


def cpu_inference_backend() -> str:
    """The scan backend of CPU inference cases: the compiled kernels where they build (what ``"auto"`` takes without
    gradients), else torch."""
    return "compiled" if compiled_kernels()[0] is not None else "torch"


def quick_plan(patches=QUICK_PATCHES, networks=None, repeats: int = 1, sections=("window", "train")) -> list[dict]:
    """The cases of ``run --quick``, those of the issue's targets first: the 96^3 windows of SegResMamba and
    SegResNet, training steps by patch, then the other windows. ``networks`` replaces both lists."""
    windows, train = [], []
    if "window" in sections:
        # windows take seconds: three timed ones each, for a median
        windows = [{"kind": "window", "network": network, "task": "spleen", "patch": 96,
                    "scan_backend": cpu_inference_backend(),
                    "repeats": max(repeats, 3)} for network in networks or QUICK_WINDOW_NETWORKS]
    if "train" in sections:
        chosen = networks or QUICK_NETWORKS
        variants = [(n, {}) for n in chosen] + [(n, {"step_in_backward": True}) for n in QUICK_STEP_IN_BACKWARD
                                                if n in chosen]
        train = [{"kind": "train", "network": network, "task": "spleen", "patch": patch, "scan_backend": "torch",
                  "repeats": repeats, **variant} for patch in patches for network, variant in variants]
    return windows[:2] + train + windows[2:]
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def plan(
    device: str,
    sections=SECTIONS,
    cpu_patches=(96, 64),
    cpu_ablation_patches=(64,),
    repeats: int | None = None,
    crop: int | None = None,
    ct: str | None = None,
) -> list[dict]:
    """The cases of a run, most important first.

    CPU (the paper's spleen setting, 1 -> 2, at reduced sizes where needed): training steps at ``cpu_patches``,
    the ablations and the memory per module at ``cpu_ablation_patches``, inference on the CT, torch scan.
    CUDA: BTCV 128^3 training steps (both scan backends for Mamba networks, 2 steps for the slow torch scan;
    SwinUNETR also without checkpointing), memory per module and ablations there, inference on the CT when
    given, then Spleen 96^3 and BraTS 128^3 training steps (CUDA scan when installed).
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    cuda = device == "cuda"
    repeats = repeats or (5 if cuda else 3)
    backends = ("cuda", "torch") if cuda else ("torch",)
    preferred = "cuda" if cuda and cuda_scan_available() else "torch"
    inference = preferred if cuda else cpu_inference_backend()

    def train(network: str, task: str, patch: int, backend: str) -> dict:
        # On CUDA the torch scan takes seconds a step where the kernel takes a tenth: fewer steps keep the run short.
        steps = min(repeats, 2) if cuda and backend == "torch" and network in MAMBA_NETWORKS else repeats
        return {"kind": "train", "network": network, "task": task, "patch": patch, "scan_backend": backend,
                "repeats": steps}

    def compared(task: str, patch: int, scan_backends=backends) -> list[dict]:
        networks = COMPARED + (("swinunetr_no_checkpoint",) if cuda else ())
        return [
            train(network, task, patch, backend)
            for network in networks
            for backend in (scan_backends if network in MAMBA_NETWORKS else (preferred,))
        ]

    cases: list[dict] = []
    headline = [("btcv", 128)] if cuda else [("spleen", patch) for patch in cpu_patches]
    ablation_groups = [("btcv", 128)] if cuda else [("spleen", patch) for patch in cpu_ablation_patches]
    if "train" in sections:
        for task, patch in headline:
            cases += compared(task, patch)
    if "modules" in sections:
        cases += [{"kind": "modules", "network": "segresmamba", "task": task, "patch": patch,
                   "scan_backend": preferred} for task, patch in ablation_groups]
    if "ablations" in sections:
        cases += [train(network, task, patch, preferred) for task, patch in ablation_groups for network in ABLATIONS]
        if "train" not in sections:  # the ratios need the default beside the variants
            cases += [train("segresmamba", task, patch, preferred) for task, patch in ablation_groups]
    if "infer" in sections and (not cuda or ct):
        cases += [
            {"kind": "infer", "network": network, "scan_backend": inference, "repeats": 1,
             **({"crop": crop} if crop else {}), **({"ct": str(ct)} if ct else {})}
            for network in COMPARED
        ]
    if "window" in sections:
        cases += [{"kind": "window", "network": network, "task": "spleen", "patch": 96, "scan_backend": inference,
                   "repeats": repeats} for network in COMPARED]
    if "train" in sections and cuda:
        for task, patch in (("spleen", 96), ("brats", 128)):
            cases += compared(task, patch, scan_backends=(preferred,))
    return cases


def _identity(case: dict) -> tuple:
    backend = case.get("scan_backend") if case.get("network") in MAMBA_NETWORKS else None
    return (case["kind"], case["network"], backend, case.get("task", "spleen"), case.get("patch"),
            bool(case.get("step_in_backward")))


def _case_arguments(case: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in case.items()]


def _run_in_subprocess(case: dict, timeout: float, threads: int | None, env: dict[str, str]) -> dict:
    """One CPU case in a fresh interpreter, so that its peak RSS is its own."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    child_env = {key: value for key, value in os.environ.items() if key not in MEMORY_ENV}
    child_env.update(env, PYTHONPATH=path)
    if threads:
        child_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "benchmarks.networks", "case", "--device=cpu", *_case_arguments(case)]
    try:
        finished = subprocess.run(command, cwd=REPO_ROOT, env=child_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"task": "spleen", **case, "device": "cpu", "status": "timeout", "error": f"no result within {timeout:.0f} s"}
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not lines:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["no output"]
        status = "oom" if finished.returncode in (-9, 137) else "error"
        return {"task": "spleen", **case, "device": "cpu", "status": status,
                "error": f"exit code {finished.returncode}: {tail[0][:400]}"}
    return json.loads(lines[-1])


def _measure_on_cpu(case: dict, timeout: float, threads: int | None) -> dict:
    """Memory and time of a CPU case from two fresh processes.

    Memory: one step (after the warm-up) with ``MALLOC_MMAP_THRESHOLD_=65536``, so that freed tensors leave the
    RSS. Time: ``repeats`` steps with glibc's default malloc, because that threshold turns every large allocation
    into a fresh mapping and slows steps down (3x seen). The per-module profile needs no RSS: default malloc.
    """
    if case["kind"] == "modules":
        return _run_in_subprocess(case, timeout, threads, {})
    phases = {"phases": True} if case["kind"] == "train" else {}
    memory = _run_in_subprocess({**case, "repeats": 1, **phases}, timeout, threads, MEMORY_ENV)
    if memory.get("status") != "ok":
        return memory
    timing = _run_in_subprocess(case, timeout, threads, {})
    if timing.get("status") != "ok":
        return timing
    return {
        **timing,
        "peak_bytes": memory["peak_bytes"],
        "baseline_bytes": memory["baseline_bytes"],
        "peak_measure": memory["peak_measure"],
        "memory_steps": memory["repeats"],
        **({"phases": memory["phases"]} if "phases" in memory else {}),
    }


def _describe(record: dict) -> str:
    where = record.get("task", "spleen") + (f" {record['patch']}^3" if record.get("patch") else "")
    backend = f" [{record['scan_backend']}]" if record.get("scan_backend") else ""
    text = f"{record['kind']} {record['network']}{backend} {where}: {record.get('status')}"
    if record.get("status") == "ok" and "peak_bytes" in record:
        text += f", {record['peak_bytes'] / GIB:.3f} GiB, {record['time_s']:.3f} s"
    elif record.get("error"):
        text += f" ({record['error'][:200]})"
    return text


def run(
    device: str = "cpu",
    out: str | None = None,
    sections=None,
    networks=None,
    cpu_patches=None,
    cpu_ablation_patches=(64,),
    repeats: int | None = None,
    ct: str | None = None,
    crop: int | None = None,
    timeout: float = 3600.0,
    threads: int | None = None,
    budget: float | None = None,
    resume: bool = False,
    plot: bool = True,
    quick: bool = False,
) -> str:
    """Run the benchmark for ``device`` and write its results into ``out``.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        out: output folder (default ``benchmarks/results/<cpu|gpu>``).
        sections: any of ``train``, ``ablations``, ``modules``, ``infer``, ``window`` (default: all).
        networks: keep only these network names (default: all planned).
        cpu_patches: CPU training patch edges (the spleen task; 96 is its paper size; default 96 and 64).
        cpu_ablation_patches: CPU patch edges of the ablations and of the memory per module.
        repeats: measured training steps per case (default 3 on CPU, 5 on CUDA).
        ct: CT for the inference cases (default: the shipped abdominal CT on CPU; CUDA runs inference only when
            given one).
        crop: centre-crop the CT to at most this many voxels per axis (CPU time).
        timeout: seconds per CPU case before it is recorded as ``timeout``.
        threads: CPU threads of each case (``OMP_NUM_THREADS``); default: torch's (one per core). On a machine
            shared with other work, 1 avoids OpenMP threads waiting on busy cores (10x slower steps seen).
        budget: seconds for the whole run; cases left when it is spent are recorded as ``skipped``.
        resume: keep the records of an earlier ``results.json`` in ``out`` and rerun only cases not ``ok`` there.
        plot: write memory_vs_parameters.png.
        quick: the short CPU run (``QUICK_NETWORKS`` at ``QUICK_PATCHES``, training steps with their memory per
            phase, one 96^3 window each, one timed step or window per case), into ``benchmarks/results/cpu_quick``
            unless ``out`` says otherwise; ``sections``, ``networks``, ``cpu_patches`` and ``repeats`` replace its
            choices where given.
    """
    if quick:
        if device != "cpu":
            raise ValueError("--quick is a CPU run")
        given = lambda value, default: default if value is None else value  # noqa: E731
        sections = given(sections, ("window", "train"))
        networks = (networks,) if isinstance(networks, str) else networks
        cpu_patches = given(cpu_patches, QUICK_PATCHES)
        repeats = given(repeats, 1)
        out = out or str(REPO_ROOT / "benchmarks" / "results" / "cpu_quick")
    sections = SECTIONS if sections is None else sections
    cpu_patches = (96, 64) if cpu_patches is None else cpu_patches
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    sections = (sections,) if isinstance(sections, str) else tuple(sections)
    cpu_patches = (cpu_patches,) if isinstance(cpu_patches, int) else tuple(cpu_patches)
    cpu_ablation_patches = (cpu_ablation_patches,) if isinstance(cpu_ablation_patches, int) else tuple(cpu_ablation_patches)
    out_dir = Path(out) if out else REPO_ROOT / "benchmarks" / "results" / ("gpu" if device == "cuda" else "cpu")
    if quick:
        cases = quick_plan(cpu_patches, networks and tuple(networks), repeats, sections)
    else:
        cases = plan(device, sections, cpu_patches, cpu_ablation_patches, repeats, crop, ct)
    if networks is not None:
        keep = {networks} if isinstance(networks, str) else set(networks)
        unknown = keep - set(NETWORKS)
        if unknown:
            raise ValueError(f"unknown network(s) {sorted(unknown)}; choose from {sorted(NETWORKS)}")
        cases = [c for c in cases if c["network"] in keep]

    records: list[dict] = []
    if resume and (out_dir / "results.json").is_file():
        records = [r for r in load_results(out_dir / "results.json")["records"] if r.get("status") == "ok"]
    done = {_identity(r) for r in records}
    cases = [c for c in cases if _identity(c) not in done]
    notes = []
    if device == "cpu":
        notes.append(
            f"CPU sizes: training at {', '.join(f'{p}^3' for p in cpu_patches)} on the spleen task (1 -> 2; its "
            "paper patch is 96^3); BTCV and BraTS at 128^3 run on the GPU only."
        )
        notes.append(f"CPU threads per case: {threads or 'torch default (one per core)'}.")
        if crop:
            notes.append(f"CPU inference on a centre crop of at most {crop} voxels per axis of the CT, for time.")
        if quick:
            notes.append(f"Quick run (`--quick`): {repeats} timed training step(s) per case and {max(repeats, 3)} "
                         "timed windows (their median), each case after a warm-up; ratios compare cases of this run.")
    else:
        torch.backends.cudnn.benchmark = True  # as the Model Zoo bundles train; its autotuning runs in the warm-up
        notes.append("cudnn.benchmark on, as in the Model Zoo bundles (autotuning happens in the warm-up step).")
    results = {"environment": environment(device), "notes": notes, "records": records}

    started = time.perf_counter()
    for index, case in enumerate(cases, start=1):
        if budget is not None and time.perf_counter() - started > budget:
            record = {"task": "spleen", **case, "device": device, "status": "skipped",
                      "error": f"run budget of {budget:.0f} s spent"}
        elif device == "cpu":
            record = _measure_on_cpu(case, timeout, threads)
        else:
            record = run_case(case, device)
        records.append(record)
        print(f"[{index}/{len(cases)}] {_describe(record)}", flush=True)
        results["run_seconds"] = round(time.perf_counter() - started, 1)
        write_results(out_dir, results, plot=False)
    write_results(out_dir, results, plot=plot)
    print(f"results in {out_dir}", flush=True)
    return str(out_dir)


def case(
    kind: str,
    network: str,
    device: str = "cpu",
    **arguments,
) -> None:
    """Run one case here and print its record as one JSON line (``kind``: train, infer or modules)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose from {sorted(NETWORKS)}")
    if "task" in arguments and arguments["task"] not in TASKS:
        raise ValueError(f"unknown task {arguments['task']!r}; choose from {sorted(TASKS)}")
    record = run_case({"kind": kind, "network": network, **arguments}, device)
    print(json.dumps(record), flush=True)


def report(results: str, out: str | None = None, plot: bool = True) -> None:
    """Re-render results.md (and the plot) from ``results`` (a results.json) into ``out`` (default: beside it)."""
    loaded = load_results(results)
    for path in write_results(out or Path(results).parent, loaded, plot=plot):
        print(path)


def main() -> None:
    import fire

    fire.Fire({"run": run, "case": case, "report": report})


if __name__ == "__main__":
    main()
