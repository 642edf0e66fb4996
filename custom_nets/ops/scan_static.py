"""The ``"static"`` scan backend: operations that depend on tensor shapes only, for tracing exporters (ONNX).

The ``"torch"`` backend picks its chunk boundaries from the values of the time steps, so that its log-space closed
form stays finite, and runs in a ``torch.autograd.Function``: a tracer freezes the boundaries of the example input,
and TorchScript cannot compile it. This scan cuts the sequence into fixed-length chunks and solves each in the
quadratic form ``h_t = sum_{s<=t} exp(sum_{s<k<=t} dt_k A) x_s``, whose exponents are never positive: it is stable
for any time steps, at the cost of a ``chunk x chunk`` matrix per chunk. Its loop over chunks depends on the sequence
length alone. Differentiable by autograd, but meant for inference.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["static_selective_scan"]


def _chunk_length(d_inner: int, d_state: int, chunk_elements: int) -> int:
    length = 8
    while length < 128 and d_inner * d_state * (2 * length) ** 2 <= chunk_elements:
        length *= 2
    return length


def _scan_chunks(
    dt: torch.Tensor, u: torch.Tensor, B: torch.Tensor, C: torch.Tensor, A: torch.Tensor, below: torch.Tensor,
    causal: torch.Tensor, h: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunks one after another. Run scripted (``_scripted_scan_chunks``), so that ONNX export makes one
    ``Loop`` of it, not K copies.

    Shapes: ``dt, u`` (b, d, K, T); ``B, C`` (b, K, T, N); ``A`` (1, d, 1, N); ``below`` (T, T, 1), 1 below the
    diagonal, else 0; ``causal`` (T, T, 1), 0 on and below the diagonal, -inf above; ``h`` (b, d, N).
    Returns ``y`` (b, d, K, T) and the last state.
    """
    ys: list[torch.Tensor] = []
    for k in range(dt.shape[2]):
        dt_k, u_k, B_k, C_k = dt[:, :, k], u[:, :, k], B[:, k], C[:, k]
        steps = dt_k.unsqueeze(-1) * A  # log decay of each step: (b, d, T, N)
        log_decay = torch.cumsum(steps, dim=2)  # from the chunk's start
        # sum over k in (s, t] of the steps, summed directly: S_t - S_s would lose float32 digits to cancellation
        segments = torch.cumsum(steps.unsqueeze(3) * below, dim=2)  # (b, d, T, T, N)
        weights = torch.exp(segments + causal)  # zero where s > t
        inputs = (dt_k * u_k).unsqueeze(-1) * B_k.unsqueeze(1)  # dt_s u_s B_s: (b, d, T, N)
        states = (weights * inputs.unsqueeze(2)).sum(3) + torch.exp(log_decay) * h.unsqueeze(2)
        ys.append((states * C_k.unsqueeze(1)).sum(-1))
        h = states[:, :, -1]
    return torch.stack(ys, dim=2), h


@functools.lru_cache(maxsize=None)
def _scripted_scan_chunks():
    return torch.jit.script(_scan_chunks)  # on first use: compiling it at import would slow every import


def static_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk: int | None = None,
    chunk_elements: int = 1 << 19,
):
    """``selective_scan`` (same arguments and result) computed with shape-only control flow.

    Grouped ``B``/``C`` (4D) are not supported.

    Args:
        chunk: the chunk length T; by default the longest power of two in [8, 128] for which one chunk's
            ``(d_inner, T, T, N)`` weight tensor has at most ``chunk_elements`` elements.
        chunk_elements: longer chunks mean fewer iterations of the exported Loop (each costs onnxruntime a fixed
            time), but the work per step grows with T and the weights stop fitting in cache.
    """
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError("the static scan supports B and C of shape (batch, d_state, L) only")
    dtype = u.dtype
    u, delta, B, C = (t.float() for t in (u, delta, B, C))
    dt = delta if delta_bias is None else delta + delta_bias.float()[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    length = u.shape[-1]
    chunk = chunk or _chunk_length(u.shape[1], A.shape[1], chunk_elements)
    pad = (-length) % chunk
    if pad:  # zero steps: no decay and no input, the state passes through unchanged
        dt, u, B, C = (F.pad(t, (0, pad)) for t in (dt, u, B, C))
    batch, d_inner, padded = u.shape
    to_chunks = (batch, d_inner, padded // chunk, chunk)
    B, C = (t.reshape(batch, -1, padded // chunk, chunk).permute(0, 2, 3, 1) for t in (B, C))  # (b, K, T, N)
    below = torch.ones(chunk, chunk, device=u.device).tril(-1)[:, :, None]  # (T, T, 1)
    causal = torch.full((chunk, chunk), float("-inf"), device=u.device).triu(1)[:, :, None]
    h = u.new_zeros(batch, d_inner, A.shape[1])
    A = A.float()[None, :, None, :]
    # Unoptimised execution (a setting of this thread only): TorchScript's CPU fuser would spend minutes compiling
    # the chunk loop for every shape.
    with torch.jit.optimized_execution(False):
        y, h = _scripted_scan_chunks()(dt.reshape(to_chunks), u.reshape(to_chunks), B, C, A, below, causal, h)
    y = y.reshape(batch, d_inner, padded)
    y = y[..., :length]
    u = u[..., :length]
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, h.to(dtype)) if return_last_state else y
