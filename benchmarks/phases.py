"""Per-phase CPU memory of one training step: which part of forward, loss, backward or the optimizer step sets
the peak RSS.

``python -m benchmarks.phases run`` measures each setting in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536``
(so that RSS follows the live tensors, see ``benchmarks.memory``) and writes ``results.json`` and ``results.md``
under ``--out``. A process builds the network (spleen task, 1 -> 2, batch 1, float32, torch scan), runs one
warm-up step (Adam allocates its state there), releases the gradients, then profiles one step with
``profile.rss_peaks_per_phase``: the peak RSS of every stretch between two module boundaries (forward and
backward, modules of at most ``depth`` name parts), the loss and the optimizer step, relative to the RSS before
the step (so weights, Adam state and the batch are left out, as in ``benchmarks.networks``). A second forward
pass counts the bytes autograd keeps for backward (``profile.saved_tensor_bytes_per_module``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from custom_nets.io.atomic import atomic_output

from .profile import roll_up, rss_peaks_per_phase, saved_tensor_bytes_per_module

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
# (label, network name in benchmarks.zoo, SegResMamba options)
SETTINGS = {
    "default": ("segresmamba", {}),
    "tom_recompute": ("segresmamba", {"tom_recompute": True}),
}


def case(setting: str = "default", patch: int = 64, depth: int = 2, threads: int = 1, seed: int = 0,
         options: str | None = None) -> None:
    """Profile one training step in this process and print its record as one JSON line.

    Args:
        setting: a name of ``SETTINGS`` (or ``"custom"`` with ``options``).
        patch: cubic patch edge. depth: name parts of the profiled modules (``stages.0`` is 2).
        threads: torch's intra-op threads. options: JSON of SegResMamba arguments, replacing the setting's.
    """
    from .cases import LEARNING_RATE, _batch, _loss
    from .zoo import TASKS, build_network

    torch.set_num_threads(threads)
    name, overrides = SETTINGS.get(setting, ("segresmamba", {}))
    if options:
        overrides = json.loads(options)
    task = TASKS["spleen"]
    torch.manual_seed(seed)
    if name == "segresmamba":
        from custom_nets import SegResMamba

        net = SegResMamba(in_channels=1, out_channels=2, scan_backend="torch", **overrides)
    else:
        net = build_network(name, task, patch, "torch")
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_function = _loss(task)
    image, label = _batch(task, patch, torch.device("cpu"), seed)

    def step(mark=lambda event: None) -> None:
        loss = loss_function(net(image), label)
        mark("loss")
        loss.backward()
        mark("backward end")
        optimizer.step()
        mark("optimizer step")
        optimizer.zero_grad(set_to_none=True)

    step()
    phases = rss_peaks_per_phase(net, step, depth=depth)
    saved = saved_tensor_bytes_per_module(net, lambda: loss_function(net(image), label), depth=depth)
    gradients = sum(p.numel() * p.element_size() for p in net.parameters())
    record = dict(setting=setting, network=name, options=overrides, patch=patch, depth=depth, threads=threads,
                  phases=phases, peak=max(p["peak"] for p in phases), saved=roll_up(saved),
                  saved_total=sum(saved.values()), gradient_bytes=gradients)
    print(json.dumps(record), flush=True)


def _in_fresh_process(arguments: list[str]) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.phases", "case", *arguments]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def run(out: str = "benchmarks/results/phases", settings=tuple(SETTINGS), patches=(64, 96), depth: int = 2,
        threads: int = 1) -> None:
    """Profile every setting at every patch edge, each in a fresh process; write results.json and results.md."""
    settings = (settings,) if isinstance(settings, str) else tuple(settings)
    patches = (patches,) if isinstance(patches, int) else tuple(patches)
    records = []
    for patch in patches:
        for setting in settings:
            record = _in_fresh_process([setting, f"--patch={patch}", f"--depth={depth}", f"--threads={threads}"])
            print(f"{setting} {patch}^3: peak {record['peak'] / MIB:.0f} MiB", flush=True)
            records.append(record)
    from .report import environment

    results = dict(environment=environment("cpu"), records=records)
    out_dir = Path(out)
    with atomic_output(out_dir / "results.json") as temporary:
        temporary.write_text(json.dumps(results, indent=1))
    with atomic_output(out_dir / "results.md") as temporary:
        temporary.write_text(render(results))


def _mib(value: float) -> str:
    return f"{value / MIB:.0f}"


def render(results: dict, top: int = 8) -> str:
    """Markdown: per record, the peak, the phases with the highest peaks and those with the largest transients."""
    env = results["environment"]
    lines = [
        "# Memory per phase of one CPU training step (SegResMamba)",
        "",
        f"{env['date']}, git {str(env.get('git_commit'))[:10]}, {env['cpu']} ({env['cpu_count']} CPUs), torch "
        f"{env['torch']}. Spleen task (1 -> 2), batch 1, float32, torch scan, DiceCE, Adam. Peak RSS relative to "
        "the RSS before the step (weights, Adam state, batch left out), fresh process per record, "
        "MALLOC_MMAP_THRESHOLD_=65536. `end`: RSS when the phase ended (what stays alive); `transient`: how far "
        "the phase's peak rose above both of its ends. MiB.",
    ]
    for record in results["records"]:
        phases = record["phases"]
        lines += [
            "",
            f"## {record['setting']} {record['patch']}^3 {record['options'] or ''}",
            "",
            f"Peak {_mib(record['peak'])} MiB; kept for backward {_mib(record['saved_total'])} MiB; parameter "
            f"gradients {_mib(record['gradient_bytes'])} MiB.",
            "",
            "| phase (ended by) | peak | end | transient |",
            "|---|---:|---:|---:|",
        ]
        chosen = sorted(phases, key=lambda p: -p["peak"])[:top]
        chosen += [p for p in sorted(phases, key=lambda p: -p["transient"])[:top] if p not in chosen]
        for phase in sorted(chosen, key=lambda p: phases.index(p)):
            lines.append(f"| {phase['phase']} | {_mib(phase['peak'])} | {_mib(phase['end'])} | "
                         f"{_mib(phase['transient'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import fire

    fire.Fire({"case": case, "run": run})
