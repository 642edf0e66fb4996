"""The torch selective scan on CPU, forward and backward: the recurrence stepped through every chunk at once.

The sequence is cut into chunks of ``chunk`` steps and the chunks into blocks. Within a block each step of the
recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t`` is one elementwise operation over all of the block's chunks:
a first sweep gives every chunk's end state from a zero start, a pass over groups of chunks the state entering each
of them, and a second sweep from those states gives ``h_t`` and ``y_t = <C_t, h_t>``. The backward pass
(``scan_backward``) recomputes a block's states the same way from a state the forward pass recorded, and runs the
adjoint recurrence backwards in time through the same chunks; its gradients are written out by hand.

Compared with the closed form that CUDA tensors take (``scan_chunked._scan_segment``, differentiated by autograd)
this multiplies decays step by step, so it needs no bound on the decay inside a chunk, and it makes fewer passes
over the state elements, all into buffers of a per-thread workspace reused from block to block. Writing into
buffers is what makes it fast and what makes it non-differentiable: ``scan_chunked._ChunkedSelectiveScan`` runs
it with gradients off and calls ``scan_backward`` for the gradients.

Layout: time-major, state elements as ``(batch, groups, chunks, chunk, d_state, d_inner // groups)``, so that the
innermost dimension of every operation is the long, contiguous channel one.
"""

from __future__ import annotations

import math
import threading

import torch

from .layout import from_time_major, to_time_major

__all__ = ["full_precision_matmul", "scan_backward", "scan_forward"]

LOG2E = 1.0 / math.log(2.0)


def scan_forward(dt, u, A, B, C, chunk: int, record_every: int | None = None, block_elements: int = 1 << 20):
    """Run the recurrence over the whole sequence from a zero state.

    Args:
        dt: time steps after bias and softplus, ``(batch, d_inner, L)``.
        u: input, ``(batch, d_inner, L)``.
        A: ``(d_inner, d_state)``.
        B, C: ``(batch, groups, d_state, L)``.
        chunk: steps per chunk.
        record_every: the state entering every ``record_every``-th step is returned (a multiple of ``chunk``);
            ``None`` records nothing (no backward pass to come).
        block_elements: state elements of one block (the default, 4 MiB in float32, is the size of its decay and
            input buffers: each operation then outweighs its dispatch, and a block still fits the last-level cache;
            of 2^18 to 2^21, 2^20 was fastest here).

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
    block = max(1, block_elements // per_chunk)
    if record_every is not None:
        record_chunks = record_every // chunk
        block = max(record_chunks, block // record_chunks * record_chunks)  # blocks start on recorded chunks
    y = dt.new_empty(batch, groups, per_group, length)
    h = dt.new_zeros(batch, groups, d_state, per_group)
    recorded, recurrence = [], None
    for start in range(0, chunks, block):
        end = min(start + block, chunks)
        if recurrence is None or recurrence.chunks != end - start:  # made for the first block and for a shorter last one
            recurrence = _BlockRecurrence((batch, groups, end - start, chunk, d_state, per_group), dt.dtype)
        decay = recurrence.fill_decays(dt_t[:, :, start:end], A2)
        torch.mul(dtu_t[:, :, start:end].unsqueeze(4), B_t[:, :, start:end].unsqueeze(5), out=recurrence.buffers["inputs"])
        h = recurrence.run(h, inputs="inputs", out="decay")  # h_t, written over the decays it no longer needs
        if record_every is not None:
            recorded.append(recurrence.entering[:, :, ::record_chunks].clone())
        y_block = dtu_t[:, :, start:end]  # each block's outputs go over its dt * u, read by then
        if full_precision_matmul(decay):
            torch.matmul(C_t[:, :, start:end].unsqueeze(4), decay, out=y_block.unsqueeze(4))
        else:
            torch.sum(decay * C_t[:, :, start:end].unsqueeze(5), dim=4, out=y_block)
        from_time_major(y_block.flatten(2, 3), y[:, :, :, start * chunk : end * chunk])
    records = torch.cat(recorded, dim=2).movedim(2, 0).transpose(3, 4) if recorded else None
    return y.view(batch, d_inner, length), records, h.transpose(2, 3)


class _BlockRecurrence:
    """The linear recurrence ``s_t = a_t * s_{t-1} + x_t`` over every chunk of one block, and its buffers: views of
    the per-thread workspace, made once for every block of the same size (in the loops over steps and chunks,
    making a view costs about a third of the small operation on it).

    ``shape``: ``(batch, groups, chunks, chunk, d_state, d_inner // groups)``. ``buffers``: block-sized buffers by
    name (``names``; ``decay``, the ``a_t``, always first, filled with ``chunk_decay``, each chunk's product of
    decays, by ``fill_decays``); ``local_end`` and ``entering`` are per chunk, without ``chunk``. The chunk chain of
    each direction is made on first use.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, names: tuple[str, ...] = ("decay", "inputs")):
        batch, groups, chunks, chunk, d_state, per_group = shape
        size = max(1, math.isqrt(chunks))
        padded = -(-chunks // size) * size
        per_chunk_shape = (batch, groups, padded, d_state, per_group)
        buffers = _workspace([shape] * len(names) + [per_chunk_shape] * 3, dtype)
        self.chunks = chunks
        self.buffers = dict(zip(names, buffers))
        self.steps = {name: buffer.unbind(3) for name, buffer in self.buffers.items()}
        chunk_decay, local_end, entering = buffers[len(names) :]
        chunk_decay[:, :, chunks:] = 1  # padding: chunks that decay by nothing and add nothing
        local_end[:, :, chunks:] = 0
        self.chunk_decay, self.local_end, self.entering = (t[:, :, :chunks] for t in (chunk_decay, local_end, entering))
        self._padded, self._size, self._chains = (chunk_decay, local_end, entering), size, {}

    def chain(self, reverse: bool = False) -> "_ChunkChain":
        if reverse not in self._chains:
            self._chains[reverse] = _ChunkChain(*self._padded, self._size, reverse)
        return self._chains[reverse]

    def fill_decays(self, dt: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
        """``decay`` = ``exp2(dt A2)`` step by step and ``chunk_decay`` = their product per chunk, as ``exp2`` of
        each chunk's summed time steps; ``dt``: ``(batch, groups, chunks, chunk, d_inner // groups)``, ``A2``:
        ``(1, groups, 1, d_state, d_inner // groups)``. Returns ``decay``."""
        decay = self.buffers["decay"]
        torch.mul(dt.unsqueeze(4), A2.unsqueeze(2), out=decay).exp2_()
        torch.mul(dt.sum(3).unsqueeze(3), A2, out=self.chunk_decay).exp2_()
        return decay

    def run(self, start: torch.Tensor, inputs: str, out: str, reverse: bool = False) -> torch.Tensor:
        """``s_t`` from ``s_{-1} = start`` (``reverse``: ``s_t = a_t * s_{t+1} + x_t`` from ``s_T = start``), ``x_t``
        in buffer ``inputs``, into buffer ``out`` (which may be ``inputs`` or ``decay``): each chunk's end state
        from a zero start, all chunks at once; the state entering each chunk (``entering``); then every step of
        every chunk from it. Returns the state at the far end."""
        order = (lambda steps: steps[::-1]) if reverse else (lambda steps: steps)
        decays, step_inputs, step_out = (order(self.steps[name]) for name in ("decay", inputs, out))
        local_end = self.local_end.copy_(step_inputs[0])
        for decay_j, inputs_j in zip(decays[1:], step_inputs[1:]):
            torch.addcmul(inputs_j, decay_j, local_end, out=local_end)
        last = self.chain(reverse)(start)
        state = self.entering
        for decay_j, inputs_j, out_j in zip(decays, step_inputs, step_out):
            state = torch.addcmul(inputs_j, decay_j, state, out=out_j)
        return last


class _ChunkChain:
    """The states entering each chunk, for ``s_k = decay_k * s_{k-1} + local_end_k`` along dim 2 (``reverse``:
    ``s_k = decay_k * s_{k+1} + local_end_k``, the chunks taken from the last).

    The chunks are taken in groups of ``size``, about ``sqrt(K)``: each group's decay and end state from a zero start,
    for all groups at once, then the groups one after another, then the chunks inside all groups at once. That is
    about ``4 sqrt(K)`` operations instead of ``K``, which for these small states is what the time goes to. It
    writes in place, so the closed form, which autograd differentiates when backward recomputes a segment, keeps its
    own differentiable twin (``scan_chunked._chain_chunks``).

    ``decay``, ``local_end``, ``entering``: ``(batch, groups, K, ...)`` buffers, ``K`` a multiple of ``size``; calling
    the chain with the state before the first chunk taken (the same shape without ``K``) writes the entering states
    into ``entering`` and returns the state after the last chunk taken.
    """

    def __init__(self, decay: torch.Tensor, local_end: torch.Tensor, entering: torch.Tensor, size: int,
                 reverse: bool = False):
        order = (lambda views: views[::-1]) if reverse else (lambda views: views)
        grouped = (*decay.shape[:2], -1, size, *decay.shape[3:])
        self.decays, self.ends = order(decay.view(grouped).unbind(3)), order(local_end.view(grouped).unbind(3))
        self.enterings = order(entering.view(grouped).unbind(3))
        self.group_decay, self.group_end = torch.empty_like(self.decays[0]), torch.empty_like(self.ends[0])
        group_decays, group_ends = order(self.group_decay.unbind(2)), order(self.group_end.unbind(2))
        self.group_entering = order(self.enterings[0].unbind(2))  # the state entering each group
        self.group_steps = list(zip(group_ends, group_decays, self.group_entering, self.group_entering[1:]))
        self.last_group = group_ends[-1], group_decays[-1], self.group_entering[-1]

    def __call__(self, h0: torch.Tensor) -> torch.Tensor:
        self.group_decay.copy_(self.decays[0])
        self.group_end.copy_(self.ends[0])
        for decay_j, end_j in zip(self.decays[1:], self.ends[1:]):
            torch.addcmul(end_j, decay_j, self.group_end, out=self.group_end)
            self.group_decay.mul_(decay_j)
        self.group_entering[0].copy_(h0)
        for end_i, decay_i, entering_i, entering_next in self.group_steps:
            torch.addcmul(end_i, decay_i, entering_i, out=entering_next)
        for j in range(1, len(self.enterings)):
            torch.addcmul(self.ends[j - 1], self.decays[j - 1], self.enterings[j - 1], out=self.enterings[j])
        return torch.addcmul(*self.last_group)


_workspaces = threading.local()


def _workspace(shapes: list[tuple[int, ...]], dtype: torch.dtype) -> list[torch.Tensor]:
    """Buffers of ``shapes``, carved from one kept per thread and grown as needed. Fresh memory of this size costs a
    page fault per 4 KiB on first touch, which took a quarter of the forward time when the buffers were allocated
    per call."""
    sizes = [math.prod(shape) for shape in shapes]
    kept = getattr(_workspaces, "buffers", {}).get(dtype)
    if kept is None or kept.numel() < sum(sizes):
        kept = torch.empty(sum(sizes), dtype=dtype)
        _workspaces.buffers = {**getattr(_workspaces, "buffers", {}), dtype: kept}
    return [piece.view(shape) for piece, shape in zip(kept[: sum(sizes)].split(sizes), shapes)]


def full_precision_matmul(t: torch.Tensor) -> bool:
    """Whether float32 matmuls on ``t``'s device keep full precision: not TF32 on CUDA, nor bfloat16 on CPU under a
    float32 matmul precision below ``"highest"``. The closed form's scaled terms span up to e^60, which those would
    round to 8-11 bits, and either form's readout would lose digits; where this is false, both sum instead."""
    return t.device.type == "cpu" and (t.dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest")


def scan_backward(dt, u, A, B, C, grad_y, grad_last, records, segment: int, chunk: int, block_elements: int = 1 << 20):
    """The gradients of the recurrence, by hand: ``scan_forward``'s states recomputed block by block from the states
    it recorded, and the adjoint recurrence stepped backwards through the same chunks.

    With ``a_t = exp(dt_t A)``, ``x_t = dt_t u_t B_t``, ``h_t = a_t h_{t-1} + x_t`` and ``y_t = <C_t, h_t>``, the
    adjoint ``g_t = dL/dh_t`` follows ``g_t = a_{t+1} g_{t+1} + C_t dy_t`` from ``g_{L-1} = C_{L-1} dy_{L-1} +
    grad_last``, and (sums over the state index n or the channel d as the shapes ask)::

        dC_t = sum_d h_t dy_t       dB_t = sum_d g_t dt_t u_t        d(dt_t u_t) = sum_n g_t B_t
        w_t = g_t * a_t h_{t-1} = g_t * (h_t - x_t):   ddt_t += sum_n w_t A,   dA = sum_t w_t dt_t

    Both recurrences run as ``scan_forward`` runs its own (each step one operation over every chunk of a block),
    so nothing of size ``batch x d_inner x L x d_state`` is alive beyond one block's buffers. Autograd through the
    closed form, which CUDA tensors still take, made several times as many passes over the states.

    Args:
        dt, u: ``(batch, d_inner, L)``, the time steps after bias and softplus; ``A``: ``(d_inner, d_state)``;
        B, C: ``(batch, groups, d_state, L)``.
        grad_y: the gradient of ``y`` (before the skip term and the gate), ``(batch, d_inner, L)``.
        grad_last: the gradient of the last state, ``(batch, groups, d_inner // groups, d_state)``, or ``None``.
        records, segment: the states ``scan_forward`` recorded (``record_every=segment``).
        chunk: steps per chunk; block_elements: state elements of one block (a multiple of ``segment`` steps).

    All in one floating dtype. Returns ``y``, ``ddt``, ``du`` (like ``dt``), ``dA`` (like ``A``) and ``dB``, ``dC``
    (like ``B``).
    """
    batch, d_inner, length = dt.shape
    groups, d_state = B.shape[1], B.shape[2]
    per_group = d_inner // groups
    padded = -(-length // chunk) * chunk
    A_ = A.reshape(1, groups, 1, per_group, d_state).transpose(3, 4).contiguous()  # (1, g, 1, N, dg)
    A2 = A_ * LOG2E  # exp(dt A) = exp2(dt A2), as in scan_forward

    per_step = batch * d_inner * d_state
    block = max(1, block_elements // (per_step * segment)) * segment
    # the results channel-major, as returned; each block's inputs go to time-major on their own and its results come
    # back, so that no time-major copy of a whole sequence is alive (a dozen of them, before)
    y, ddt, du = (dt.new_empty(batch, groups, per_group, length) for _ in range(3))
    dB, dC = B.new_empty(B.shape), C.new_empty(C.shape)
    grouped = [t.reshape(batch, groups, per_group, length) for t in (dt, u, grad_y)]
    dA = A_.new_zeros(A_.shape)
    recurrence = None
    carry = dt.new_zeros(batch, groups, d_state, per_group) if grad_last is None else (
        grad_last.reshape(batch, groups, per_group, d_state).transpose(2, 3).contiguous()
    )
    for start in reversed(range(0, padded, block)):
        end = min(start + block, padded)
        steps, real = end - start, min(end, length) - start  # real: the steps before the padding
        w = slice(start, start + real)
        # dt one step further: a_{t+1} is the decay that carries g_{t+1} back to step t (past the end, a decay of 1
        # carries grad_last)
        dt_ahead = to_time_major(grouped[0][..., start : min(end + 1, length)], padded=steps + 1)
        dt_t, dt_next = dt_ahead[:, :, :steps], dt_ahead[:, :, 1:]  # (b, g, steps, dg)
        u_t, grad_t = (to_time_major(t[..., w], padded=steps) for t in grouped[1:])
        B_t, C_t = (to_time_major(t[..., w], padded=steps) for t in (B, C))  # (b, g, steps, N)
        dtu_t = dt_t * u_t
        chunks = steps // chunk
        if recurrence is None or recurrence.chunks != chunks:  # made for the last block and for the full ones before it
            recurrence = _BlockRecurrence((batch, groups, chunks, chunk, d_state, per_group), dt.dtype,
                                        ("decay", "inputs", "states", "adjoint"))
        inputs, states, adjoint = (recurrence.buffers[name] for name in ("inputs", "states", "adjoint"))
        flat = (batch, groups, steps, d_state, per_group)
        by_chunk = (batch, groups, chunks, chunk, per_group)
        recurrence.fill_decays(dt_t.view(by_chunk), A2)
        torch.mul(dtu_t.unsqueeze(3), B_t.unsqueeze(4), out=inputs.view(flat))
        entering = records[start // segment].transpose(2, 3)  # (b, g, N, dg)
        recurrence.run(entering, inputs="inputs", out="states")
        h = states.view(flat)
        y_t = torch.sum(h * C_t.unsqueeze(4), dim=3)
        dC_t = torch.sum(h * grad_t.unsqueeze(3), dim=4)
        recurrence.fill_decays(dt_next.view(by_chunk), A2)
        torch.mul(C_t.unsqueeze(4), grad_t.unsqueeze(3), out=adjoint.view(flat))
        carry = recurrence.run(carry, inputs="adjoint", out="adjoint", reverse=True)
        g = adjoint.view(flat)
        dB_t = torch.sum(g * dtu_t.unsqueeze(3), dim=4)
        ddtu_t = torch.sum(g * B_t.unsqueeze(4), dim=3)  # d(dt u)
        weighted = h.sub_(inputs.view(flat)).mul_(g)  # w_t = g_t * a_t h_{t-1}
        ddt_t = torch.sum(weighted * A_, dim=3).addcmul_(ddtu_t, u_t)
        dA += (weighted * dt_t.unsqueeze(3)).sum(dim=(0, 2), keepdim=True)
        for result, out in ((y_t, y), (ddt_t, ddt), (ddtu_t.mul_(dt_t), du)):
            from_time_major(result, out[..., w])
        dB[..., w], dC[..., w] = dB_t[:, :, :real].transpose(2, 3), dC_t[:, :, :real].transpose(2, 3)
    dA = dA.transpose(3, 4).reshape(d_inner, d_state)
    y, ddt, du = (t.view(batch, d_inner, length) for t in (y, ddt, du))
    return y, ddt, du, dA, dB, dC

