"""Tri-oriented Mamba (ToM): three selective scans over a flattened volume, summed.

Directions: ``forward`` (raster order, W fastest), ``reverse`` (that sequence flipped) and ``inter_slice``
(depth fastest: for every in-plane position, all D slices in turn). The scans share one input and one output
projection; each has its own causal conv1d, ``x_proj``, ``dt_proj``, ``A_log`` and ``D``. Parameter names and
initialisation follow mamba-ssm's ``Mamba`` block, so weights move between the torch and CUDA backends as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..ops import BACKENDS, causal_conv1d, resolve_backend, selective_scan
from ..ops.scan_compiled import ScanOrder, compiled_causal_conv1d, compiled_scan, raster_order

__all__ = ["DirectionalScan", "TriOrientedMamba", "DIRECTIONS"]

DIRECTIONS = ("forward", "reverse", "inter_slice")


class DirectionalScan(nn.Module):
    """The per-direction part of a Mamba block: causal depthwise conv, input-dependent (dt, B, C), selective scan.

    Args:
        d_inner: channels of the scanned sequence.
        d_state: state size N of the SSM.
        d_conv: kernel size of the causal depthwise conv1d.
        dt_rank: rank of the time-step projection.
        dt_min, dt_max, dt_init_floor: range of the initial time steps (log-uniform), as in mamba-ssm.
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        dt_init_std = dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():  # dt_proj.bias = softplus^-1(dt)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, x: torch.Tensor, z: torch.Tensor, backend: str) -> torch.Tensor:
        """``x``, ``z``: ``(batch, d_inner, L)`` in this direction's order; ``backend``: a resolved scan backend
        (``resolve_backend``). Returns ``(batch, d_inner, L)`` gated by ``silu(z)``, in the dtype of the conv1d's
        output (the autocast dtype under autocast, else ``x``'s)."""
        x = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, backend)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (batch, d_inner, L); bias added in the scan
        # Every backend computes in float32 inside (fp16 scans overflow) and returns u's dtype, so the sequences go
        # in as they are: float32 copies of them would be what the scan keeps for backward, twice the size under
        # AMP. The parameters go in as float32, as mamba-ssm passes them. Autocast is off inside, where the torch
        # backend's float32 products must stay float32.
        dtype = x.dtype
        device_type = x.device.type if torch.amp.is_autocast_available(x.device.type) else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return selective_scan(
                x, dt.to(dtype), -torch.exp(self.A_log.float()), B.transpose(1, 2).to(dtype),
                C.transpose(1, 2).to(dtype), self.D.float(), z.to(dtype), delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True, backend=backend,
            )

    def forward_in_order(self, x: torch.Tensor, z: torch.Tensor, order: ScanOrder, out: torch.Tensor,
                         accumulate: bool, workspace: torch.Tensor) -> None:
        """``forward`` by the compiled kernels (backend ``"compiled"``, no gradients), the steps taken in ``order``
        from sequences kept in raster order: ``x``, ``z`` ``(batch, d_inner, L)``; the result written into (or, with
        ``accumulate``, added to) ``out``, ``(batch, d_inner, L)`` float32; ``workspace``, a float32 tensor like
        ``out``, takes the conv1d's output."""
        u = compiled_causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, order, workspace)
        dt, B, C = self.x_proj(u.transpose(1, 2)).transpose(1, 2).split([self.dt_rank, self.d_state, self.d_state], 1)
        compiled_scan(u, dt, -torch.exp(self.A_log.float()), B, C, self.D, z, self.dt_proj.bias, True, order, out,
                      accumulate=accumulate, delta_weight=self.dt_proj.weight)  # dt_proj inside the kernel


def _scan_order(direction: str, spatial: tuple[int, int, int]) -> ScanOrder:
    """``direction``'s order of the tokens of a raster-ordered sequence, for the compiled kernels: the same steps as
    ``_to_order`` makes, without moving them."""
    depth, height, width = spatial
    length = depth * height * width
    if direction == "forward":
        return raster_order(length)
    if direction == "reverse":
        return ScanOrder(1, length, 0, -1, length - 1)
    return ScanOrder(height * width, depth, 1, height * width, 0)  # for every in-plane position, every slice


def _to_order(t: torch.Tensor, direction: str, spatial: tuple[int, int, int]) -> torch.Tensor:
    """(batch, channels, L) in raster order -> the same tokens in ``direction``'s order."""
    if direction == "forward":
        return t
    if direction == "reverse":
        return t.flip(-1)
    depth, height, width = spatial
    return t.reshape(*t.shape[:2], depth, height * width).transpose(2, 3).reshape(t.shape)


def _from_order(t: torch.Tensor, direction: str, spatial: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of ``_to_order``."""
    if direction != "inter_slice":
        return _to_order(t, direction, spatial)
    depth, height, width = spatial
    return t.reshape(*t.shape[:2], height * width, depth).transpose(2, 3).reshape(t.shape)


class TriOrientedMamba(nn.Module):
    """ToM layer on a 3D feature map: ``x + out_proj(sum_dir scan_dir(in_proj(LayerNorm(x))))``.

    The residual (on by default) gives the layer an identity path at initialisation, which keeps deep stacks of
    ToM layers stable (SegMamba added it for that reason); ``residual=False`` returns the mixer output alone.

    Args:
        channels: C, the channels of the feature map.
        d_state: SSM state size. d_conv: causal conv width. expand: d_inner = expand * C.
        dt_rank: ``"auto"`` = ceil(C / 16).
        residual: add the input to the output.
        backend: scan backend, ``"auto"`` or a name of ``custom_nets.ops.BACKENDS``, resolved once per forward
            pass for all three directions. The ``backend`` attribute may be changed later (ONNX export sets
            ``"static"``).
        recompute: keep only the layer's input for the backward pass. Each direction then runs on its own from
            that input (norm, in_proj, conv1d, reorders, scan, out_proj) and the backward pass recomputes one
            direction at a time, so the intermediates of one direction, not of three, are alive at once. Costs one
            more forward pass of the layer, and the norm and the projections run once per direction; same results
            up to float rounding (the three projected directions are summed instead of projecting their sum).

    With the ``"compiled"`` backend (CPU, no gradients: what ``"auto"`` takes for inference) the layer keeps one
    raster-ordered copy of its sequences, and each direction's conv1d and scan take the tokens in that direction's
    order where they are (``_scan_order``), adding into one output buffer.

    Shapes: ``(batch, C, D, H, W) -> (batch, C, D, H, W)``.
    """

    def __init__(
        self,
        channels: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        residual: bool = True,
        backend: str = "auto",
        recompute: bool = False,
    ) -> None:
        super().__init__()
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"scan backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
        d_inner = expand * channels
        dt_rank = math.ceil(channels / 16) if dt_rank == "auto" else int(dt_rank)
        self.residual, self.backend, self.recompute = residual, backend, recompute
        self.norm = nn.LayerNorm(channels)
        self.in_proj = nn.Linear(channels, 2 * d_inner, bias=False)
        # one scan per direction, in the order of DIRECTIONS
        self.scans = nn.ModuleList(DirectionalScan(d_inner, d_state, d_conv, dt_rank) for _ in DIRECTIONS)
        self.out_proj = nn.Linear(d_inner, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = resolve_backend(self.backend, x)
        if self.recompute and torch.is_grad_enabled():
            # out_proj is linear, so the sum of the projected directions is the projection of their sum: each
            # direction runs from x alone, and backward recomputes one direction at a time
            out = None
            for direction in range(len(DIRECTIONS)):
                part = checkpoint(self._mix, x, backend, (direction,), use_reentrant=False)
                out = part if out is None else out + part
        elif backend == "compiled":
            out = self._mix_in_order(x)
        else:
            out = self._mix(x, backend)
        return x + out if self.residual else out

    def _mix_in_order(self, x: torch.Tensor) -> torch.Tensor:
        """``_mix`` by the compiled kernels: one raster-ordered copy of the sequences, each direction taking its own
        order of them and adding its output into one buffer (no reordered copies, no sums of copies)."""
        spatial = tuple(x.shape[2:])
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (batch, L, C)
        xs, zs = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, L) views
        batch, d_inner, length = xs.shape
        mixed = torch.empty(batch, length, d_inner).transpose(1, 2)  # what out_proj reads
        workspace = torch.empty_like(mixed)  # one for the three directions: fresh memory costs page faults
        for index, (name, scan) in enumerate(zip(DIRECTIONS, self.scans)):
            scan.forward_in_order(xs, zs, _scan_order(name, spatial), mixed, index > 0, workspace)
        return self.out_proj(mixed.transpose(1, 2).to(x.dtype)).transpose(1, 2).reshape(x.shape)

    def _mix(self, x: torch.Tensor, backend: str, directions: tuple[int, ...] | None = None) -> torch.Tensor:
        """The layer without its residual, ``out_proj(sum_dir scan_dir(in_proj(LayerNorm(x))))``, the sum over
        ``directions`` (indices into ``DIRECTIONS``; default all)."""
        spatial = tuple(x.shape[2:])
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (batch, L, C), raster order
        xs, zs = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, L) each
        mixed = None
        for index in range(len(DIRECTIONS)) if directions is None else directions:
            name, scan = DIRECTIONS[index], self.scans[index]
            out = _from_order(scan(_to_order(xs, name, spatial), _to_order(zs, name, spatial), backend), name, spatial)
            mixed = out if mixed is None else mixed + out
        return self.out_proj(mixed.transpose(1, 2)).transpose(1, 2).reshape(x.shape)
