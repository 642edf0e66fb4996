"""Quick checks of the benchmark code: the SegMamba baseline, the meters and the writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from benchmarks.memory import CpuPeakMeter
from benchmarks.profile import forward_seconds_per_module, roll_up, saved_tensor_bytes_per_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a machine shared with other work, two OpenMP threads run these steps 3-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def segmamba_module():
    from benchmarks.baselines import segmamba  # imports monai (slow): once per session

    return segmamba


def small_segmamba(segmamba_module, in_channels=1, out_channels=3):
    torch.manual_seed(0)
    return segmamba_module.SegMamba(
        in_channels, out_channels, widths=(8, 16, 32, 64), hidden_size=128, scan_backend="torch"
    )


# ---- SegMamba baseline -------------------------------------------------------------------------------------


def test_segmamba_shapes_and_gradients(segmamba_module):
    from custom_nets.blocks import TriOrientedMamba

    net = small_segmamba(segmamba_module, in_channels=2, out_channels=3)
    toms = [m for m in net.modules() if isinstance(m, TriOrientedMamba)]
    assert len(toms) == 8  # two per stage, four stages
    x = torch.randn(1, 2, 16, 32, 48)  # anisotropic: the inter-slice order must follow the real depth
    y = net(x)
    assert y.shape == (1, 3, 16, 32, 48)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in toms[0].parameters())
    assert toms[0].scans[2].A_log.grad.abs().sum() > 0  # the inter-slice scan takes part


def test_segmamba_default_widths(segmamba_module):
    net = segmamba_module.SegMamba(1, 14)
    assert [gsc.mix.conv.in_channels for gsc in net.gscs] == [48, 96, 192, 384]
    assert net.lifts[-1].layer.conv1.conv.out_channels == 768  # the bottleneck the decoder starts from


def test_segmamba_rejects_bad_input(segmamba_module):
    net = small_segmamba(segmamba_module)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.randn(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, 1, D, H, W\)"):
        net(torch.randn(1, 2, 32, 32, 32))


def test_gated_spatial_conv_gates(segmamba_module):
    torch.manual_seed(0)
    gsc = segmamba_module.GatedSpatialConv(3, 8).eval()
    x = torch.randn(1, 8, 8, 8, 8)
    with torch.no_grad():
        expected = x + gsc.mix(gsc.spatial(x) * gsc.gate(x))
        assert torch.allclose(gsc(x), expected)
        nn.init.zeros_(gsc.gate.conv.weight), nn.init.constant_(gsc.gate.conv.bias, -1.0)  # gate -> relu -> 0
        assert torch.allclose(gsc(x), x + gsc.mix(torch.zeros_like(x)))


# ---- meters and writers ------------------------------------------------------------------------------------


def test_saved_tensor_bytes_per_module():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.randn(100, 10)
    saved = saved_tensor_bytes_per_module(net, lambda: net(x).sum())
    # Linear 0 keeps its input (its weight is a parameter: left out); ReLU keeps its output, which Linear 2 keeps
    # too: one storage, counted once, for its first saver.
    assert saved == {"1": 100 * 20 * 4, "0": 100 * 10 * 4}
    assert roll_up({"stages.0.tom_full": 3, "stages.0.up": 2, "stem": 1}) == {"stages.0": 5, "stem": 1}


class Sleeper(nn.Module):
    def __init__(self, seconds: float, child: nn.Module | None = None) -> None:
        super().__init__()
        self.seconds, self.child = seconds, child

    def forward(self, x):
        time.sleep(self.seconds)
        return self.child(x) if self.child is not None else x


def test_forward_seconds_are_exclusive():
    net = nn.Sequential(Sleeper(0.02, child=Sleeper(0.1)))
    seconds = forward_seconds_per_module(net, lambda: net(torch.zeros(1)))
    assert seconds["0.child"] >= 0.1
    assert 0.02 <= seconds["0"] < 0.1  # the child's time is not counted again in its parent


class Transient(nn.Module):
    """Takes ``mib`` MiB for a moment in its forward pass and ``mib`` in its backward pass, keeps none."""

    def __init__(self, mib: int) -> None:
        super().__init__()
        self.mib = mib

    def forward(self, x):
        torch.ones(self.mib * 2**20 // 4).sum()
        return TransientBackward.apply(x, self.mib)


class TransientBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mib):
        ctx.mib = mib
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        torch.ones(ctx.mib * 2**20 // 4).sum()
        return grad, None


def transient_phases() -> dict[str, dict]:
    """``rss_peaks_per_phase`` of a step through two ``Transient`` modules (48 and 96 MiB), by phase."""
    from benchmarks.profile import rss_peaks_per_phase

    net = nn.Sequential(nn.Linear(4, 4), Transient(48), nn.Linear(4, 4), Transient(96))
    x = torch.randn(2, 4)

    def step(mark):
        loss = net(x).sum()
        mark("loss")
        loss.backward()

    return {p["phase"]: p for p in rss_peaks_per_phase(net, step, depth=1)}


def in_memory_process(function: str):
    """``function()`` of this module run in a process of its own with freed memory going back to the OS, as
    benchmarks.memory measures: in the pytest process, blocks freed by earlier tests can serve an allocation without
    the RSS moving. Its JSON result."""
    script = f"import json, sys; sys.path[:0] = ['tests', '.']; import test_benchmarks as t; print(json.dumps(t.{function}()))"
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_rss_peaks_per_phase_finds_the_phase_of_a_transient():
    phases = in_memory_process("transient_phases")
    mib = 2**20
    assert phases["forward 1 end"]["transient"] >= 44 * mib and phases["forward 3 end"]["transient"] >= 92 * mib
    assert phases["backward 3 end"]["transient"] >= 92 * mib and phases["backward 1 end"]["transient"] >= 44 * mib
    # the other phases allocate nothing of that size
    quiet = {name: p["transient"] for name, p in phases.items() if name.endswith(("0 end", "2 end", "loss"))}
    assert max(quiet.values()) < 30 * mib, quiet
    assert phases["step end"]["end"] < 30 * mib  # nothing kept


def freed_allocation_peak() -> int:
    meter = CpuPeakMeter()
    meter.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del block
    return meter.stop()


def test_cpu_peak_meter_sees_a_freed_allocation():
    assert in_memory_process("freed_allocation_peak") >= 60 * 2**20


def test_sliding_windows_matches_monai():
    from monai.inferers import sliding_window_inference

    from benchmarks.cases import sliding_windows

    calls = []

    def predictor(window):
        calls.append(window.shape[0])
        return window

    sliding_window_inference(torch.zeros(1, 1, 20, 17, 8), (8, 8, 8), 1, predictor, overlap=0.5)
    assert sum(calls) == sliding_windows((20, 17, 8), 8, 0.5)


def test_plan_covers_the_issue():
    from benchmarks.networks import cpu_inference_backend, plan, quick_plan

    cpu = plan("cpu")
    assert {c["scan_backend"] for c in cpu if c["kind"] == "train"} == {"torch"}
    assert {c["scan_backend"] for c in cpu if c["kind"] in ("infer", "window")} == {cpu_inference_backend()}
    assert {(c["network"], c["patch"]) for c in cpu if c["kind"] == "train"} >= {
        ("segresmamba", 96), ("swinunetr", 96), ("segmamba", 64), ("segresmamba_checkpointing", 64)
    }
    assert sum(c["kind"] == "infer" for c in cpu) == 6
    assert {c["network"] for c in cpu if c["kind"] == "window"} >= {"segresmamba", "segresnet", "swinunetr"}
    stepped = {(c["network"], c["patch"]) for c in quick_plan() if c.get("step_in_backward")}
    assert stepped == {(n, p) for n in ("segresmamba", "segresmamba_tom_recompute") for p in (64, 96)}
    gpu = [c for c in plan("cuda") if c["kind"] == "train" and c["task"] == "btcv"]
    assert {(c["network"], c["scan_backend"]) for c in gpu} >= {
        ("segresmamba", "cuda"), ("segresmamba", "torch"), ("segmamba", "cuda"), ("swinunetr_no_checkpoint", "torch")
    }


def test_a_training_step_with_the_update_in_backward_is_recorded_as_such():
    from benchmarks.cases import run_case
    from benchmarks.report import _label

    case = {"kind": "train", "network": "unet", "patch": 32, "repeats": 1, "step_in_backward": True}
    record = run_case(case, "cpu")
    assert record["status"] == "ok", record
    assert record["step_in_backward"] is True and _label(record) == "unet, step in backward"
    assert "step_in_backward" not in run_case({**case, "step_in_backward": False}, "cpu")


@pytest.mark.slow
def test_run_writes_results(tmp_path):
    """One real CPU case through the subprocess runner (memory and time from a fresh process each), then the JSON,
    markdown and plot writers; a 96^3 window case, which the runner starts the same way, run in this process."""
    from benchmarks.cases import run_case
    from benchmarks.networks import run
    from benchmarks.report import load_results, write_results

    out = tmp_path / "cpu"
    run("cpu", out=str(out), quick=True, sections=("train",), networks=("unet",), cpu_patches=(32,), threads=1)
    results = load_results(out / "results.json")
    assert {"date", "torch", "monai", "cpu"} <= set(results["environment"])
    (record,) = results["records"]
    assert record["status"] == "ok", record
    assert record["peak_measure"] == "peak RSS increase" and record["peak_bytes"] > 0 and record["time_s"] > 0
    assert record["memory_steps"] == 1 and record["repeats"] == 1  # memory from its own process, time from another
    assert set(record["phases"]) == {"forward and loss", "backward", "optimizer step"}
    assert record["peak_bytes"] == max(record["phases"].values())
    markdown = (out / "results.md").read_text()
    assert f"| unet | {record['parameters'] / 1e6:.2f} | {record['peak_bytes'] / 2**30:.3f} |" in markdown
    assert "## Training memory per phase" in markdown
    assert (out / "memory_vs_parameters.png").read_bytes()[:4] == b"\x89PNG"

    window = run_case({"kind": "window", "network": "unet", "task": "spleen", "patch": 96, "repeats": 1}, "cpu")
    assert (window["kind"], window["patch"], window["status"]) == ("window", 96, "ok") and window["time_s"] > 0
    write_results(out, {**results, "records": [window, record]}, plot=False)
    assert "| unet | 96^3 |" in (out / "results.md").read_text()
    with pytest.raises(FileNotFoundError, match="results file not found"):
        load_results(tmp_path / "missing.json")
