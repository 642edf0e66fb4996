"""An estimate, without a GPU, of what a float16 AMP training step of SegResMamba keeps for backward on a GPU.

``python -m benchmarks.saved_estimate case`` builds the network (BTCV: 1 -> 14, feature size 48, torch scan), runs
forward and DiceCE loss under CPU autocast in bfloat16 (the same 2-byte activations as float16 AMP on CUDA, where
convolutions and linear layers run in the low precision and norms in float32) and counts the bytes autograd keeps
for backward per module (``profile.saved_tensor_bytes_per_module``). Every activation scales with the number of
voxels, so a count at ``patch``^3 times ``(128 / patch)^3`` estimates BTCV's 128^3. Labelled an estimate: the GPU
runs other kernels (mamba-ssm's scan also keeps its ungated output, ``scan_extra`` below; causal-conv1d's kernel
keeps its own input), and its allocator adds workspaces and fragmentation that no count of saved tensors sees.
"""

from __future__ import annotations

import json

import torch

from .profile import roll_up, saved_tensor_bytes_per_module

GIB = 2**30


def case(patch: int = 64, tom_recompute: bool = False, target: int = 128, threads: int = 1, seed: int = 0) -> None:
    """Print one JSON record: saved bytes at ``patch``^3 per part and in total, and scaled to ``target``^3."""
    from monai.losses import DiceCELoss

    from custom_nets import SegResMamba
    from custom_nets.blocks import TriOrientedMamba

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = SegResMamba(in_channels=1, out_channels=14, scan_backend="torch", tom_recompute=bool(tom_recompute)).train()
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, patch, patch, patch, generator=generator)
    label = torch.randint(0, 14, (1, 1, patch, patch, patch), generator=generator).float()
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_function(net(image), label)

    saved = saved_tensor_bytes_per_module(net, forward, depth=3)
    scale = (target / patch) ** 3
    # mamba-ssm's kernel keeps the scan's output before the gate (batch x d_inner x L, in the scan's input dtype)
    # where the torch backend keeps one state per segment: counted per scan where the layer keeps its scans' inputs
    scan_extra = 0
    if not tom_recompute:
        toms = {name: m for name, m in net.named_modules() if isinstance(m, TriOrientedMamba)}
        stage_voxels = [(patch // 2 // 2**i) ** 3 for i in range(4)]
        for name, module in toms.items():
            stage = int(name.split(".")[1])
            length = stage_voxels[stage] // (8 if name.endswith("tom_half") else 1)
            d_inner = module.out_proj.in_features
            scan_extra += len(module.scans) * d_inner * length * 2
    total = sum(saved.values())
    print(json.dumps(dict(
        patch=patch, target=target, tom_recompute=bool(tom_recompute), dtype="bfloat16 autocast",
        saved_bytes=total, saved_parts=roll_up(saved), saved_at_target_gib=total * scale / GIB,
        cuda_scan_extra_at_target_gib=scan_extra * scale / GIB,
        stage0_tom_full_at_target_gib=saved.get("stages.0.tom_full", 0) * scale / GIB,
    )), flush=True)


if __name__ == "__main__":
    import fire

    fire.Fire({"case": case})
