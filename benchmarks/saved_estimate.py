"""An estimate, without a GPU, of what a float16 AMP training step keeps for backward on a GPU (BTCV 128^3).

``python -m benchmarks.saved_estimate case --network=segresmamba`` builds a network of ``benchmarks.zoo`` for BTCV
(1 -> 14, torch scan), runs forward and DiceCE loss under CPU autocast in bfloat16 (the same 2-byte activations as
float16 AMP on CUDA: convolutions and linear layers in the low precision, norms in float32) and counts the bytes
autograd keeps for backward (``profile.saved_tensor_bytes_per_module``), at two patch sizes. Activations grow with
the voxels and autocast's low-precision weight copies do not, so ``a + b * voxels`` through the two counts
extrapolates to ``target``^3. mamba-ssm's kernel keeps one more tensor per scan than the torch backend (its output
before the gate, ``batch x d_inner x L`` in the scan's input dtype): ``cuda_scan_extra``, counted from the scans'
input shapes where autograd keeps the scans' inputs (not under ``tom_recompute``).

An estimate, labelled so wherever it is quoted: the GPU runs other kernels (causal-conv1d's keeps its own input),
and its allocator adds workspaces and fragmentation that no count of saved tensors sees.
"""

from __future__ import annotations

import json

import torch

from .profile import roll_up, saved_tensor_bytes_per_module

GIB = 2**30


def _count(network: str, patch: int, seed: int) -> tuple[dict[str, int], int]:
    from .cases import _batch, _loss
    from .zoo import TASKS, build_network
    from custom_nets.blocks import DirectionalScan, TriOrientedMamba

    task = TASKS["btcv"]
    torch.manual_seed(seed)
    net = build_network(network, task, patch, "torch").train()
    image, label = _batch(task, patch, torch.device("cpu"), seed)
    loss_function = _loss(task)
    scan_elements = []
    keeps_inputs = {id(s) for m in net.modules() if isinstance(m, TriOrientedMamba) and not m.recompute
                    for s in m.scans}
    handles = [m.register_forward_hook(lambda m, args, out: scan_elements.append(out.numel()))
               for m in net.modules() if isinstance(m, DirectionalScan) and id(m) in keeps_inputs]

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_function(net(image), label)

    try:
        saved = saved_tensor_bytes_per_module(net, forward, depth=3)
    finally:
        for handle in handles:
            handle.remove()
    return saved, 2 * sum(scan_elements)


def case(network: str = "segresmamba", patches=(64, 96), target: int = 128, threads: int = 1, seed: int = 0) -> None:
    """Print one JSON record: saved bytes per part at each patch, and the totals extrapolated to ``target``^3."""
    torch.set_num_threads(threads)
    small, large = patches
    counts = {patch: _count(network, patch, seed) for patch in patches}

    def extrapolate(at_small: float, at_large: float) -> float:
        slope = (at_large - at_small) / (large**3 - small**3)
        return at_small + slope * (target**3 - small**3)

    totals = {patch: sum(saved.values()) for patch, (saved, _) in counts.items()}
    stage0 = {patch: saved.get("stages.0.tom_full", 0) for patch, (saved, _) in counts.items()}
    print(json.dumps(dict(
        network=network, patches=list(patches), target=target, dtype="bfloat16 autocast (CPU)",
        saved_bytes={str(p): t for p, t in totals.items()},
        saved_parts={str(p): roll_up(saved) for p, (saved, _) in counts.items()},
        saved_at_target_gib=extrapolate(totals[small], totals[large]) / GIB,
        cuda_scan_extra_at_target_gib=extrapolate(counts[small][1], counts[large][1]) / GIB,
        stage0_tom_full_at_target_gib=extrapolate(stage0[small], stage0[large]) / GIB,
    )), flush=True)


if __name__ == "__main__":
    import fire

    fire.Fire({"case": case})
