"""The forward pass of the torch selective scan on CPU: the recurrence stepped through every chunk at once.

The sequence is cut into chunks of ``chunk`` steps and the chunks into blocks. Within a block each step of the
recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t`` is one elementwise operation over all of the block's chunks:
a first sweep gives every chunk's end state from a zero start, a pass over groups of chunks the state entering each
of them, and a second sweep from those states gives ``h_t`` and ``y_t = <C_t, h_t>``.

Compared with the closed form that the backward pass recomputes (``scan._scan_segment``) this multiplies decays step
by step, so it needs no bound on the decay inside a chunk, and it makes fewer passes over the state elements, all
into two buffers reused from block to block. Writing into buffers is what makes it fast and what makes it
non-differentiable: ``scan._ChunkedSelectiveScan`` runs it with gradients off.

Layout: time-major, state elements as ``(batch, groups, chunks, chunk, d_state, d_inner // groups)``, so that the
innermost dimension of every operation is the long, contiguous channel one.
"""

from __future__ import annotations

import math
import threading

import torch

from .layout import from_time_major, to_time_major

__all__ = ["full_precision_matmul", "scan_forward"]

# State elements of one block (4 MiB in float32), the size of each of the two buffers: each operation then
# outweighs its dispatch, and a block still fits the last-level cache. Of 2^18 to 2^21, 2^20 was fastest here.
BLOCK_ELEMENTS = 1 << 20
LOG2E = 1.0 / math.log(2.0)


def scan_forward(dt, u, A, B, C, chunk: int, record_every: int | None = None):
    """Run the recurrence over the whole sequence from a zero state.

    Args:
        dt: time steps after bias and softplus, ``(batch, d_inner, L)``.
        u: input, ``(batch, d_inner, L)``.
        A: ``(d_inner, d_state)``.
        B, C: ``(batch, groups, d_state, L)``.
        chunk: steps per chunk.
        record_every: the state entering every ``record_every``-th step is returned (a multiple of ``chunk``);
            ``None`` records nothing (no backward pass to come).

    All in one floating dtype. Returns ``y`` ``(batch, d_inner, L)``, the recorded states
    ``(records, batch, groups, d_inner // groups, d_state)`` (or ``None``) and the last state
    ``(batch, groups, d_inner // groups, d_state)``.
    """
    batch, d_inner, length = dt.shape
    groups, d_state = B.shape[1], B.shape[2]
    per_group = d_inner // groups
    chunks = -(-length // chunk)
    dt_t = to_time_major(dt, groups, chunks * chunk)
    dtu_t = to_time_major(u, groups, chunks * chunk).mul_(dt_t)
    B_t, C_t = (to_time_major(t, padded=chunks * chunk) for t in (B, C))
    dt_t, dtu_t, B_t, C_t = (t.view(batch, groups, chunks, chunk, -1) for t in (dt_t, dtu_t, B_t, C_t))
    # exp(dt A) = exp2(dt A2), A2 (1, g, 1, N, dg); contiguous, since a strided innermost operand makes the
    # largest product of the pass four times slower
    A2 = (A * LOG2E).reshape(1, groups, 1, per_group, d_state).transpose(3, 4).contiguous()

    per_chunk = batch * d_inner * d_state * chunk
    block = max(1, BLOCK_ELEMENTS // per_chunk)
    if record_every is not None:
        record_chunks = record_every // chunk
        block = max(record_chunks, block // record_chunks * record_chunks)  # blocks start on recorded chunks
    decay_buffer, input_buffer = _workspace((batch, groups, block, chunk, d_state, per_group), dt.dtype)
    y = dt.new_empty(batch, groups, per_group, length)
    h = dt.new_zeros(batch, groups, d_state, per_group)
    recorded = []
    for start in range(0, chunks, block):
        end = min(start + block, chunks)
        decay, inputs = decay_buffer[:, :, : end - start], input_buffer[:, :, : end - start]
        torch.mul(dt_t[:, :, start:end].unsqueeze(4), A2.unsqueeze(2), out=decay).exp2_()
        torch.mul(dtu_t[:, :, start:end].unsqueeze(4), B_t[:, :, start:end].unsqueeze(5), out=inputs)
        # Views made once: in the loops below, indexing would cost as much as the small operations themselves.
        decays, step_inputs = decay.unbind(3), inputs.unbind(3)
        local_end = step_inputs[0].clone()
        for step in range(1, chunk):
            torch.addcmul(step_inputs[step], decays[step], local_end, out=local_end)
        chunk_decay = torch.exp2_(dt_t[:, :, start:end].sum(3).unsqueeze(3) * A2)
        entering, h = _enter_chunks(chunk_decay, local_end, h)
        if record_every is not None:
            recorded.append(entering[:, :, ::record_chunks].clone())
        state = entering
        for step in range(chunk):  # h_t, written over the decays it no longer needs
            state = torch.addcmul(step_inputs[step], decays[step], state, out=decays[step])
        y_block = dtu_t[:, :, start:end]  # each block's outputs go over its dt * u, read by then
        if full_precision_matmul(decay):
            torch.matmul(C_t[:, :, start:end].unsqueeze(4), decay, out=y_block.unsqueeze(4))
        else:
            torch.sum(decay * C_t[:, :, start:end].unsqueeze(5), dim=4, out=y_block)
        from_time_major(y_block.flatten(2, 3), y[:, :, :, start * chunk : end * chunk])
    records = torch.cat(recorded, dim=2).movedim(2, 0).transpose(3, 4) if recorded else None
    return y.view(batch, d_inner, length), records, h.transpose(2, 3)


def _enter_chunks(decay: torch.Tensor, local_end: torch.Tensor, h0: torch.Tensor):
    """States entering each chunk, for ``s_k = decay_k * s_{k-1} + local_end_k`` along dim 2 from ``s_{-1} = h0``.

    The chunks are taken in groups of about ``sqrt(K)``: each group's decay and end state from a zero start, for all
    groups at once, then the groups one after another, then the chunks inside all groups at once. That is about
    ``4 sqrt(K)`` operations instead of ``K``, which for these small states is what the time goes to. It writes in
    place, so the closed form, which autograd differentiates when backward recomputes a segment, keeps its own
    differentiable twin (``scan._chain_chunks``).
    ``decay``, ``local_end``: ``(batch, groups, K, ...)``; ``h0`` the same without ``K``. Returns the entering
    states (like ``decay``) and the state after the last chunk.
    """
    chunks = decay.shape[2]
    size = max(1, math.isqrt(chunks))
    padding = -chunks % size
    if padding:  # chunks that decay by nothing and add nothing
        shape = (*decay.shape[:2], padding, *decay.shape[3:])
        decay = torch.cat([decay, decay.new_ones(shape)], dim=2)
        local_end = torch.cat([local_end, local_end.new_zeros(shape)], dim=2)
    grouped = (*decay.shape[:2], -1, size, *decay.shape[3:])
    decays, ends = decay.view(grouped).unbind(3), local_end.view(grouped).unbind(3)
    group_decay, group_end = decays[0].clone(), ends[0].clone()
    for decay_j, end_j in zip(decays[1:], ends[1:]):
        torch.addcmul(end_j, decay_j, group_end, out=group_end)
        group_decay.mul_(decay_j)
    entering = torch.empty_like(local_end).view(grouped)
    group_entering = entering.unbind(3)[0]
    group_entering[:, :, 0] = h0
    for group_entering_next, group_decay_i, group_end_i, group_entering_i in zip(
        group_entering.unbind(2)[1:], group_decay.unbind(2), group_end.unbind(2), group_entering.unbind(2)
    ):
        torch.addcmul(group_end_i, group_decay_i, group_entering_i, out=group_entering_next)
    h = torch.addcmul(group_end[:, :, -1], group_decay[:, :, -1], group_entering[:, :, -1])
    enterings = entering.unbind(3)
    for j in range(1, size):
        torch.addcmul(ends[j - 1], decays[j - 1], enterings[j - 1], out=enterings[j])
    return entering.view(local_end.shape)[:, :, :chunks], h


_workspaces = threading.local()


def _workspace(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Two buffers of ``shape``, kept per thread and grown as needed. Fresh memory of this size costs a page fault
    per 4 KiB on first touch, which took a quarter of the forward time when the buffers were allocated per call."""
    size = math.prod(shape)
    kept = getattr(_workspaces, "buffers", {}).get(dtype)
    if kept is None or kept.shape[1] < size:
        kept = torch.empty(2, size, dtype=dtype)
        _workspaces.buffers = {**getattr(_workspaces, "buffers", {}), dtype: kept}
    return kept[0, :size].view(shape), kept[1, :size].view(shape)


def full_precision_matmul(t: torch.Tensor) -> bool:
    """Whether float32 matmuls on ``t``'s device keep full precision: not TF32 on CUDA, nor bfloat16 on CPU under a
    float32 matmul precision below ``"highest"``. The closed form's scaled terms span up to e^60, which those would
    round to 8-11 bits, and either form's readout would lose digits; where this is false, both sum instead."""
    return t.device.type == "cpu" and (t.dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest")
