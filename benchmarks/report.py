"""Results of a benchmark run: the environment stamp, JSON, a markdown report with ratios and targets, a plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from custom_nets.io.atomic import atomic_output

__all__ = ["GIB", "environment", "load_results", "render_markdown", "write_atomic", "write_results"]

GIB = 2**30
PAPER_BTCV_SEGRESMAMBA_BYTES = 5.10e9  # the paper's 5.10 GB, read as 10^9 bytes (the stricter reading)
REFERENCES = ("swinunetr", "segmamba")

# (device, kind, task, patch, quantity, reference, bound): the targets of issue 13 for SegResMamba
TARGETS = [
    ("cpu", "train", "spleen", 96, "peak_bytes", "swinunetr", 0.30),
    ("cpu", "train", "spleen", 96, "time_s", "swinunetr", 0.6),
    ("cpu", "train", "spleen", 64, "peak_bytes", "swinunetr", 0.35),
    ("cuda", "train", "btcv", 128, "peak_bytes", "swinunetr", 0.45),
    ("cuda", "train", "btcv", 128, "peak_bytes", "segmamba", 0.30),
    ("cpu", "window", "spleen", 96, "time_s", "segresnet", 1.5),
]
PHASES = ("forward and loss", "backward", "optimizer step")
# SegResMamba with an option on: compared with the references like the default, in tables and targets
OPTIONS = ("segresmamba_tom_recompute", "segresmamba_bf16")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = result.stdout.strip()
        # a copy without history answers "HEAD" (exit 128): no commit known
        return commit if result.returncode == 0 and len(commit) == 40 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _command() -> str:
    arguments = list(sys.argv)
    if arguments and Path(arguments[0]).name == "networks.py":  # run as python -m benchmarks.networks
        arguments[:1] = ["-m", "benchmarks.networks"]
    return " ".join(["python", *arguments])


def environment(device: str) -> dict:
    """Hardware, versions and date of a run on ``device``."""
    from custom_nets.ops.cuda_kernels import causal_conv1d_kernel, selective_scan_kernel

    scan_kernel, scan_reason = selective_scan_kernel()
    conv_kernel, conv_reason = causal_conv1d_kernel()
    stamp = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _memory_total(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "monai": _version("monai"),
        "numpy": _version("numpy"),
        "segresmamba": _version("custom_nets"),
        "git_commit": _git_commit(),
        "mamba_scan_kernel": "available" if scan_kernel is not None else f"unavailable ({scan_reason})"[:200],
        "causal_conv1d_kernel": "available" if conv_kernel is not None else f"unavailable ({conv_reason})"[:200],
        "command": _command(),
    }
    if device == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        stamp.update(gpu=properties.name, gpu_memory_bytes=properties.total_memory, gpu_count=torch.cuda.device_count())
    return stamp


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` whole or not at all (``custom_nets.io.atomic_output``): every benchmark result."""
    with atomic_output(path) as temporary:
        temporary.write_bytes(text.encode() if isinstance(text, str) else text)


def load_results(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"results file {path} is not valid JSON: {error}") from error
    if not isinstance(results, dict) or "records" not in results or "environment" not in results:
        raise ValueError(f"results file {path} lacks 'environment' and 'records'")
    return results


def write_results(out_dir: str | Path, results: dict, plot: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and (with ``plot``) ``memory_vs_parameters.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "results.md"]
    write_atomic(written[0], json.dumps(results, indent=2) + "\n")
    write_atomic(written[1], render_markdown(results))
    if plot:
        from .plot import plot_memory_vs_parameters

        png = out_dir / "memory_vs_parameters.png"
        if plot_memory_vs_parameters(results, png):
            written.append(png)
    return written


# ---- markdown ----------------------------------------------------------------------------------------------


def _order(record: dict) -> tuple:
    """Networks in the zoo's order, CUDA scan before torch scan."""
    from .zoo import NETWORKS

    names = list(NETWORKS)
    network = record.get("network")
    return (names.index(network) if network in names else len(names), record.get("scan_backend") != "cuda")


def _label(record: dict) -> str:
    backend = record.get("scan_backend")
    label = f"{record['network']} [{backend}]" if backend else record["network"]
    return label + (", step in backward" if record.get("step_in_backward") else "")


def _group_key(record: dict) -> tuple:
    """Records compared with each other: same kind, task, patch, and run (results merged from several runs
    carry a ``run`` number; ratios never cross runs)."""
    return record["kind"], record.get("task", "spleen"), record.get("patch"), record.get("run", 0)


def _find(records: list[dict], network: str, key: tuple, backend: str | None) -> dict | None:
    """The ok record of ``network`` in group ``key``, with the optimizer stepped after backward (ratios are to the
    references' usual step); a Mamba reference prefers the same scan backend."""
    found = [r for r in records if r["network"] == network and _group_key(r) == key and r.get("status") == "ok"
             and not r.get("step_in_backward")]
    same = [r for r in found if r.get("scan_backend") == backend]
    if same:
        return same[0]
    return next((r for r in found if r.get("scan_backend") == "cuda"), found[0] if found else None)


def ratio(records: list[dict], record: dict, reference: str, quantity: str) -> float | None:
    other = _find(records, reference, _group_key(record), record.get("scan_backend"))
    if record.get("status") != "ok" or other is None or not other.get(quantity) or not record.get(quantity):
        return None
    return record[quantity] / other[quantity]


def _fmt(value, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _status(record: dict) -> str:
    status = record.get("status", "?")
    return status if status == "ok" else f"{status}: {record.get('error', '')}".replace("|", "/")[:160]


def _table(records: list[dict], all_records: list[dict], memory_header: str) -> list[str]:
    lines = [
        f"| network | params (M) | {memory_header} | time (s) | mem / SwinUNETR | mem / SegMamba "
        "| time / SwinUNETR | time / SegMamba | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ratios = [_fmt(ratio(all_records, r, ref, q)) for q in ("peak_bytes", "time_s") for ref in REFERENCES]
        lines.append(
            f"| {_label(r)} | {_fmt(r.get('parameters'), 2, 1e6)} | {_fmt(r.get('peak_bytes'), 3, GIB)} "
            f"| {_fmt(r.get('time_s'), 3)} | {' | '.join(ratios)} | {_status(r)} |"
        )
    return lines


def _memory_header(records: list[dict]) -> str:
    measures = {r.get("peak_measure") for r in records if r.get("peak_measure")}
    return f"{' / '.join(sorted(measures)) or 'peak memory'} (GiB)"


def _module_lines(record: dict, top: int = 10) -> list[str]:
    from .profile import roll_up

    saved = record.get("saved_bytes", {})
    seconds = record.get("forward_seconds", {})
    parameters = record.get("parameters_per_part", {})
    total_bytes = record.get("saved_total_bytes") or 1
    total_seconds = record.get("forward_total_s") or 1
    saved_parts, second_parts = roll_up(saved), roll_up(seconds)
    lines = [
        f"{_label(record)}, {record.get('task')} {record.get('patch')}^3, {record['device']}"
        f"{' AMP' if record.get('amp') else ''}: {total_bytes / GIB:.3f} GiB saved for backward by forward and loss "
        f"(weights left out), forward pass {total_seconds:.2f} s without gradients (each module's own time, "
        f"children's excluded).",
        "",
        "| part | params (M) | saved (GiB) | share | forward (s) | share |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys([*saved_parts, *second_parts]):
        nbytes, secs = saved_parts.get(name, 0), second_parts.get(name, 0.0)
        lines.append(
            f"| {name} | {_fmt(parameters.get(name), 3, 1e6)} | {nbytes / GIB:.3f} | {100 * nbytes / total_bytes:.1f}% "
            f"| {secs:.3f} | {100 * secs / total_seconds:.1f}% |"
        )
    lines += ["", f"Largest modules (depth {record.get('depth')}):", "",
              "| by saved memory | GiB | by forward time | s |", "|---|---|---|---|"]
    by_bytes, by_seconds = list(saved.items())[:top], list(seconds.items())[:top]
    for index in range(max(len(by_bytes), len(by_seconds))):
        left = f"{by_bytes[index][0]} | {by_bytes[index][1] / GIB:.3f}" if index < len(by_bytes) else " | "
        right = f"{by_seconds[index][0]} | {by_seconds[index][1]:.3f}" if index < len(by_seconds) else " | "
        lines.append(f"| {left} | {right} |")
    return lines


def _reference_stepped_in_backward(records: list[dict], record: dict, reference: str) -> dict | None:
    """For a record with the step in backward, the reference's record of that kind, if measured."""
    if not record.get("step_in_backward"):
        return None
    return next((r for r in records if r["network"] == reference and r.get("step_in_backward")
                 and _group_key(r) == _group_key(record) and r.get("status") == "ok"), None)


def _targets(records: list[dict], device: str) -> list[str]:
    lines, missed = [], set()
    for target_device, kind, task, patch, quantity, reference, bound in TARGETS:
        if target_device != device:
            continue
        candidates = [
            r for r in records
            if r["kind"] == kind and r["network"] in ("segresmamba", *OPTIONS) and r.get("task", "spleen") == task
            and (patch is None or r.get("patch") == patch) and r.get("status") == "ok"
        ]
        values = [(r, ratio(records, r, reference, quantity)) for r in candidates]
        values = [(r, v) for r, v in values if v is not None]
        what = "peak memory" if quantity == "peak_bytes" else "time"
        where = f"{kind} {task}" + (f" {patch}^3" if patch else "")
        if not values:
            lines.append(f"- {where}: SegResMamba {what} <= {bound}x {reference}: not measured")
        for r, value in values:
            verdict = "met" if value <= bound else "missed"
            if verdict == "missed" and kind == "train":
                missed.add(quantity)
            lines.append(f"- {where}, {_label(r)}: {what} / {reference} = {value:.2f} (target <= {bound}): {verdict}")
            alike = _reference_stepped_in_backward(records, r, reference)
            if alike is not None:
                lines.append(f"  - against {_label(alike)} (the same step on both sides): "
                             f"{r[quantity] / alike[quantity]:.2f}")
    if device == "cuda":
        for r in records:
            if (r["kind"], r["network"], r.get("task"), r.get("patch"), r.get("status")) == (
                "train", "segresmamba", "btcv", 128, "ok"
            ):
                verdict = "met" if r["peak_bytes"] <= PAPER_BTCV_SEGRESMAMBA_BYTES else "missed"
                lines.append(
                    f"- train btcv 128^3, {_label(r)}: peak {r['peak_bytes'] / 1e9:.2f} GB (10^9 bytes) vs the "
                    f"paper's 5.10 GB: {verdict}"
                )
    modules = next((r for r in records if r["kind"] == "modules" and r.get("status") == "ok"), None)
    if modules and "peak_bytes" in missed:
        top = list(modules.get("saved_bytes", {}).items())[:3]
        lines.append("- Memory is dominated by the largest saved activations: "
                     + ", ".join(f"{n} {b / GIB:.2f} GiB" for n, b in top) + " (see the per-module table).")
    if modules and "time_s" in missed:
        top = list(modules.get("forward_seconds", {}).items())[:3]
        lines.append("- Time is dominated by the slowest modules of the forward pass: "
                     + ", ".join(f"{n} {t:.2f} s" for n, t in top) + " (see the per-module table).")
    return lines


def render_markdown(results: dict) -> str:
    env, records = results["environment"], results["records"]
    device = env.get("device", "cpu")
    hardware = env.get("gpu") or env.get("cpu")
    lines = [
        f"# Network benchmark, {device.upper()}",
        "",
        f"Run {env.get('date')} on {hardware} ({env.get('cpu_count')} logical CPUs, torch threads "
        f"{env.get('torch_threads')}); python {env.get('python')}, torch {env.get('torch')} (CUDA "
        f"{env.get('torch_cuda')}), monai {env.get('monai')}, numpy {env.get('numpy')}; git {env.get('git_commit') or 'commit unknown'}.",
        f"Mamba scan kernel: {env.get('mamba_scan_kernel')}; causal-conv1d kernel: {env.get('causal_conv1d_kernel')}.",
        f"Command: `{env.get('command')}`",
        "",
    ]
    notes = results.get("notes") or []
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    if device == "cpu":
        lines += [
            "Memory on CPU is the **peak RSS increase**: RSS high-water mark during one measured step (or inference "
            "pass) minus the RSS just before it, after one warm-up, in a fresh process with "
            "`MALLOC_MMAP_THRESHOLD_=65536` so that freed tensors leave the RSS. For training it leaves out the "
            "weights, the Adam state and the batch (in the RSS before the step) and covers activations, gradients "
            "and temporaries. Time comes from a second fresh process with glibc's default malloc (the mmap "
            "threshold makes every large allocation a fresh mapping: 3x slower steps seen). float32, no AMP.",
        ]
    else:
        lines += [
            "Memory on CUDA is `torch.cuda.max_memory_allocated` over the measured steps (weights, Adam state, "
            "activations, gradients, workspaces), float16 AMP with a gradient scaler.",
        ]
    lines += ["Time is the median of the measured steps after one warm-up step. Batch 1, Adam. GiB = 2^30 bytes.", ""]

    train = [r for r in records if r["kind"] == "train"]
    ablation_names = ("segresmamba_",)
    # the paper's ablations stay out of the main table; an option that the bundles may turn on is shown there too
    main = [r for r in train if not r["network"].startswith(ablation_names) or r["network"] in OPTIONS]
    ablations = [r for r in train if r["network"].startswith(ablation_names) or r["network"] == "segresmamba"]
    several_runs = len({r.get("run", 0) for r in records}) > 1

    def run_label(key: tuple) -> str:
        return f" (run {key[3]})" if several_runs else ""

    # a group holding SegResMamba alone is the default beside the ablations: it is shown with them
    main_groups = [k for k in dict.fromkeys(_group_key(r) for r in main)
                   if any(r["network"] != "segresmamba" for r in main if _group_key(r) == k)]
    if main_groups:
        lines += ["## One training step (forward, loss, backward, Adam)", ""]
        for key in main_groups:
            group = sorted((r for r in main if _group_key(r) == key), key=_order)
            first = group[0]
            lines += [f"### {key[1]} {key[2]}^3 ({first.get('in_channels', '?')} -> {first.get('out_channels', '?')})"
                      f"{run_label(key)}", ""]
            lines += _table(group, records, _memory_header(group)) + [""]
    ablation_groups = [k for k in dict.fromkeys(_group_key(r) for r in ablations)
                       if any(r["network"] != "segresmamba" for r in ablations if _group_key(r) == k)]
    if ablation_groups:
        lines += ["## SegResMamba ablations (one training step)", ""]
        for key in ablation_groups:
            group = sorted((r for r in ablations if _group_key(r) == key), key=_order)
            lines += [f"### {key[1]} {key[2]}^3{run_label(key)}", ""]
            lines += [
                "| variant | params (M) | peak (GiB) | time (s) | mem / default | time / default | status |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in group:
                default = _find(records, "segresmamba", key, r.get("scan_backend"))
                mem = r["peak_bytes"] / default["peak_bytes"] if default and r.get("status") == "ok" else None
                tim = r["time_s"] / default["time_s"] if default and r.get("status") == "ok" else None
                lines.append(
                    f"| {_label(r)} | {_fmt(r.get('parameters'), 2, 1e6)} | {_fmt(r.get('peak_bytes'), 3, GIB)} "
                    f"| {_fmt(r.get('time_s'), 3)} | {_fmt(mem)} | {_fmt(tim)} | {_status(r)} |"
                )
            lines.append("")
    infer = [r for r in records if r["kind"] == "infer"]
    if infer:
        first = next((r for r in infer if r.get("volume_shape")), infer[0])
        lines += [
            "## Sliding-window inference on the shipped CT",
            "",
            f"example_ct.nii.gz preprocessed like the spleen bundle (RAS, spacing 1.5 x 1.5 x 2.0 mm, -57..164 HU "
            f"-> 0..1): volume {first.get('volume_shape')}{' (centre crop)' if first.get('cropped') else ''}, "
            f"roi {first.get('roi')}^3, overlap {first.get('overlap')}, sw_batch_size {first.get('sw_batch_size')}, "
            f"{first.get('windows')} windows; 2 output channels.",
            "",
            "| network | params (M) | peak (GiB) | time (s) | time / SegResNet | mem / SwinUNETR | time / SwinUNETR | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(infer, key=_order):
            lines.append(
                f"| {_label(r)} | {_fmt(r.get('parameters'), 2, 1e6)} | {_fmt(r.get('peak_bytes'), 3, GIB)} "
                f"| {_fmt(r.get('time_s'), 2)} | {_fmt(ratio(records, r, 'segresnet', 'time_s'))} "
                f"| {_fmt(ratio(records, r, 'swinunetr', 'peak_bytes'))} "
                f"| {_fmt(ratio(records, r, 'swinunetr', 'time_s'))} | {_status(r)} |"
            )
        lines.append("")
    windows = [r for r in records if r["kind"] == "window"]
    if windows:
        lines += [
            "## One inference window (forward without gradients, batch 1, 1 -> 2)",
            "",
            "| network | window | params (M) | peak (GiB) | time (s) | time / SegResNet | mem / SwinUNETR | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(windows, key=lambda r: (r.get("patch") or 0, _order(r))):
            lines.append(
                f"| {_label(r)} | {r.get('patch')}^3 | {_fmt(r.get('parameters'), 2, 1e6)} "
                f"| {_fmt(r.get('peak_bytes'), 3, GIB)} | {_fmt(r.get('time_s'), 2)} "
                f"| {_fmt(ratio(records, r, 'segresnet', 'time_s'))} "
                f"| {_fmt(ratio(records, r, 'swinunetr', 'peak_bytes'))} | {_status(r)} |"
            )
        lines.append("")
    phased = [r for r in train if r.get("phases") and r.get("status") == "ok"]
    if phased:
        lines += [
            "## Training memory per phase (peak RSS increase of each phase of the memory step, GiB)",
            "",
            "The step's peak is the largest of its phases. `forward and loss` peaks where the activations kept for "
            "backward are all alive; `backward` adds the gradients (parameter gradients stay to the end) and each "
            "layer's backward temporaries; `optimizer step` is Adam's update with every gradient alive. With the step in "
            "backward (`StepInBackward`), each parameter's update runs in `backward` as soon as its gradient is "
            "complete and the gradient is freed: `optimizer step` then does nothing.",
            "",
            f"| network | patch | {' | '.join(PHASES)} | step peak |",
            "|---|---|" + "---|" * (len(PHASES) + 1),
        ]
        for r in sorted(phased, key=lambda r: (r.get("patch") or 0, _order(r))):
            cells = " | ".join(_fmt(r["phases"].get(phase), 3, GIB) for phase in PHASES)
            lines.append(f"| {_label(r)} | {r.get('patch')}^3 | {cells} | {_fmt(r.get('peak_bytes'), 3, GIB)} |")
        lines.append("")
    modules = [r for r in records if r["kind"] == "modules"]
    if modules:
        lines += ["## Where training memory and time go (SegResMamba, per module)", ""]
        for r in modules:
            lines += (_module_lines(r) if r.get("status") == "ok" else [f"{_label(r)}: {_status(r)}"]) + [""]
    targets = _targets(records, device)
    if targets:
        lines += ["## Targets", ""] + targets + [""]
    return "\n".join(lines)
