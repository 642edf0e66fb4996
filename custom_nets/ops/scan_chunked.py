"""The ``"torch"`` scan backend: a chunked parallel scan in plain PyTorch, for CPU and CUDA tensors.

The sequence is cut into segments that fit a memory budget, and each segment into short chunks. Inside a chunk the
recurrence is solved in closed form in log space, all chunks of a segment at once; chunks are chained by their
boundary states, and segments one after another. The backward pass recomputes each segment, so what is kept for
backward is the inputs plus one state per segment, never a ``batch x d_inner x L x d_state`` tensor. On CPU both
passes step through all chunks at once instead (``scan_cpu``), which makes fewer passes over memory, and the
backward pass writes the gradients by hand rather than differentiating the closed form.

It computes in float32 (float64 inputs stay float64); outputs have ``u``'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import from_time_major, to_time_major
from .scan_cpu import full_precision_matmul, scan_backward, scan_forward

__all__ = ["chunked_selective_scan"]

# Largest decay sum |sum dt * A| allowed inside one chunk, so that exp(+-sum) stays finite and normal.
MAX_LOG_DECAY = {torch.float32: 60.0, torch.float64: 600.0}


def chunked_selective_scan(
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
    max_chunk: int = 16,
    segment_elements: int = 1 << 18,
    block_elements: int = 1 << 20,
):
    """``selective_scan`` (same arguments and result) by chunks, differentiable, the gradient of the last state
    included.

    Args:
        max_chunk: longest chunk; the prefix sum inside a chunk costs ``max_chunk`` multiply-adds per element.
        segment_elements: elements of one ``(batch, d_inner, segment, d_state)`` tensor: bounds the memory a
            segment takes, forward and backward, whatever d_inner and L are.
        block_elements: state elements of one block of the CPU forward pass (see ``scan_cpu.scan_forward``).
    """
    if max_chunk < 1 or segment_elements < 1 or block_elements < 1:
        raise ValueError(
            f"max_chunk, segment_elements and block_elements must be positive, got {max_chunk}, "
            f"{segment_elements}, {block_elements}"
        )
    # not ctx.needs_input_grad, which stays True under no_grad for parameters such as a network's D
    backward_to_come = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)
    )
    out, last_state = _ChunkedSelectiveScan.apply(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, backward_to_come, max_chunk, segment_elements,
        block_elements,
    )
    return (out, last_state) if return_last_state else out


def _as_groups(t: torch.Tensor) -> torch.Tensor:
    """B or C as (batch, groups, d_state, L)."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_group(t: torch.Tensor | None, groups: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(d_inner, ...) -> (groups, 1, d_inner // groups, ...), broadcastable against time-major tensors."""
    return None if t is None else t.to(dtype).reshape(groups, 1, -1, *t.shape[1:])


def _time_step(delta, delta_bias, softplus: bool) -> torch.Tensor:
    dt = delta if delta_bias is None else delta + delta_bias
    return _softplus(dt, in_place=delta_bias is not None) if softplus else dt


def _softplus(x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``F.softplus``, in a third of its time where no gradient is needed (torch's CPU ``log1p`` is several times
    slower than its ``log``): ``max(x, 0) + log1p(e)``, ``e = exp(-|x|)``, with
    ``log1p(e) = log(u) + (e - (u - 1)) / u``, ``u = 1 + e``, which corrects the rounding of ``u``. ``in_place``
    reuses ``x``; each fresh tensor of this size costs page faults."""
    if torch.is_grad_enabled():
        return F.softplus(x)
    e = x.abs().neg_().exp_()
    u = e + 1
    correction = e.sub_(u.sub_(1)).div_(u.add_(1))  # u - 1 and back are exact: u is in [1, 2]
    linear = x.clamp_(min=0) if in_place else x.clamp(min=0)
    return linear.add_(u.log_()).add_(correction)


def _finish(y, u, D, z):
    """Skip term and gate: ``(y + D u) * silu(z)``; in place on ``y`` where no gradient is needed."""
    in_place = not torch.is_grad_enabled()
    if D is not None:
        y = y.addcmul_(u, D) if in_place else torch.addcmul(y, u, D)
    if z is not None:
        y = y.mul_(F.silu(z)) if in_place else y * F.silu(z)
    return y


def _scan_segment(dt, u, A, B, C, h0, chunk: int):
    """The recurrence over one segment, from state ``h0``, in closed form per chunk (differentiable).

    Inside a chunk, with ``E_t = exp(A * sum(dt[1..t]))`` the decay after the chunk's first step,
    ``h_t = E_t * (exp(A * dt_0) * h_in + sum_{s<=t} dt_s B_s u_s / E_s)``; ``_plan`` keeps
    ``|A * sum(dt[1..t])|`` under ``MAX_LOG_DECAY`` so that ``1 / E_s`` stays finite. All chunks of the segment
    are computed at once, and the states entering them by a parallel scan over the chunks. On CPU the prefix sum
    is a product with a lower-triangular matrix of ones, which beats ``cumsum`` over a middle dimension.

    Shapes (time-major): ``dt, u`` (b, g, S, dg); ``A`` (g, 1, dg, N); ``B, C`` (b, g, S, N);
    ``h0`` (b, g, dg, N). Returns ``y`` (b, g, S, dg) and the state after the segment.
    """
    batch, groups, length, per_group = dt.shape
    d_state = A.shape[-1]
    padding = (-length) % chunk  # zero steps: no decay, no input, so the last state passes through unchanged
    if padding:
        dt, u, B, C = (F.pad(t, (0, 0, 0, padding)) for t in (dt, u, B, C))
    chunks = (length + padding) // chunk
    dt, u = (t.reshape(batch, groups, chunks, chunk, per_group) for t in (dt, u))
    B, C = (t.reshape(batch, groups, chunks, chunk, d_state) for t in (B, C))
    A = A.unsqueeze(1)  # (g, 1, 1, dg, N)

    log_decay = (dt.cumsum(3) - dt[:, :, :, :1]).unsqueeze(-1) * A  # log E_t: (b, g, K, T, dg, N)
    decay = torch.exp(log_decay)
    # With gradients: times exp(-log E), not 1 / E, whose backward squares E, which underflows. Without
    # (the forward pass), the reciprocal is the cheaper of the two.
    inverse_decay = torch.exp(-log_decay) if torch.is_grad_enabled() else decay.reciprocal()
    scaled = (dt * u).unsqueeze(-1) * B.unsqueeze(4) * inverse_decay
    first_decay = torch.exp(dt[:, :, :, 0].unsqueeze(-1) * A[:, :, 0])  # (b, g, K, dg, N)
    chunk_decay = first_decay * decay[:, :, :, -1]
    local_end = decay[:, :, :, -1] * scaled.sum(3)  # state at each chunk's end, from a zero start
    entering, h = _chain_chunks(chunk_decay, local_end, h0)
    scaled[:, :, :, 0] += first_decay * entering
    if full_precision_matmul(dt):
        lower_ones = torch.ones(chunk, chunk, dtype=dt.dtype, device=dt.device).tril()
        states = decay * torch.matmul(lower_ones, scaled.flatten(4)).reshape(scaled.shape)  # h_t at every step
        y = torch.matmul(states, C.unsqueeze(-1))
    else:
        states = decay * scaled.cumsum(3)
        y = (states * C.unsqueeze(4)).sum(-1)
    return y.reshape(batch, groups, chunks * chunk, per_group)[:, :, :length], h


def _chain_chunks(decay: torch.Tensor, local_end: torch.Tensor, h0: torch.Tensor):
    """States entering each chunk, for ``s_k = decay_k * s_{k-1} + local_end_k`` along dim 2 from ``s_{-1} = h0``.

    A Hillis-Steele scan: log2(K) steps over all chunks at once instead of K small steps. ``decay`` is at most 1,
    so its running products only shrink. ``decay`` and ``local_end`` are ``(batch, groups, K, ...)``, ``h0`` the
    same without ``K``. Returns the entering states (like ``decay``) and the last state.
    """
    chunks, shift = decay.shape[2], 1
    while shift < chunks:
        local_end = torch.cat([local_end[:, :, :shift], torch.addcmul(local_end[:, :, shift:], decay[:, :, shift:],
                                                                      local_end[:, :, :-shift])], dim=2)
        decay = torch.cat([decay[:, :, :shift], decay[:, :, shift:] * decay[:, :, :-shift]], dim=2)
        shift *= 2
    after = torch.addcmul(local_end, decay, h0.unsqueeze(2))  # the state after each chunk
    return torch.cat([h0.unsqueeze(2), after[:, :, :-1]], dim=2), after[:, :, -1]


def _segment_length(batch: int, d_inner: int, d_state: int, max_chunk: int, segment_elements: int) -> int:
    """Steps in a segment: about ``segment_elements`` state elements, in a whole number of ``max_chunk`` chunks (a
    segment of 21 steps in chunks of 16 would pad a third of its work)."""
    return max(1, segment_elements // (batch * d_inner * d_state * max_chunk)) * max_chunk


@torch.no_grad()
def _plan(dt: torch.Tensor, A: torch.Tensor, max_chunk: int, segment_elements: int) -> list[tuple[int, int, int]]:
    """Segments ``(start, end, chunk length)`` for time steps ``dt`` (b, d_inner, L) and ``A`` (d_inner, d_state).

    Its chunk length is the longest (up to ``max_chunk``) for which the decay sum over a chunk's steps after the
    first cannot pass ``MAX_LOG_DECAY``, given the segment's fastest decay per step; so a burst of large time steps
    shortens the chunks of its segment only.
    """
    batch, d_inner, length = dt.shape
    segment = _segment_length(batch, d_inner, A.shape[1], max_chunk, segment_elements)
    rate = (dt * A.abs().amax(dim=-1, keepdim=True).to(dt.dtype)).amax(dim=(0, 1))  # (L,): fastest decay per step
    fastest_per_segment = F.pad(rate, (0, -length % segment)).view(-1, segment).amax(dim=1).tolist()
    limit = MAX_LOG_DECAY[dt.dtype]
    plan = []
    for start, fastest in zip(range(0, length, segment), fastest_per_segment):
        end = min(start + segment, length)
        chunk = max_chunk if fastest * (max_chunk - 1) <= limit else int(limit // fastest) + 1
        plan.append((start, end, min(chunk, end - start)))
    return plan


def _closed_form_forward(dt, u, A, B, C, plan):
    """The recurrence by ``_scan_segment``, segment after segment, from a zero state.

    ``dt, u`` (b, d_inner, L); ``A`` (d_inner, N); ``B, C`` (b, g, N, L). Returns ``y`` (b, d_inner, L), the state
    entering each segment (segments, b, g, d_inner // g, N) and the last state (b, g, d_inner // g, N)."""
    groups = B.shape[1]
    dt_, u_, B_, C_ = (to_time_major(t, groups) for t in (dt, u, B, C))  # B_, C_: (b, g, L, N)
    A_ = _per_group(A, groups, dt.dtype)
    y = torch.empty_like(u_)
    h = u_.new_zeros(*u_.shape[:2], u_.shape[3], A.shape[1])
    segment_states = []
    for start, end, chunk in plan:
        segment_states.append(h)
        w = slice(start, end)
        y[:, :, w], h = _scan_segment(dt_[:, :, w], u_[:, :, w], A_, B_[:, :, w], C_[:, :, w], h, chunk)
    return from_time_major(y), torch.stack(segment_states), h


class _ChunkedSelectiveScan(torch.autograd.Function):
    """Chunked scan; saves the inputs and one state per segment, and recomputes each segment in backward.
    ``backward_to_come`` False (inference) records no states."""

    @staticmethod
    def forward(
        ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, backward_to_come, max_chunk, segment_elements,
        block_elements,
    ):
        dtype = _compute_dtype(u)
        u_, A_, B_, C_ = (t.to(dtype) for t in (u, A, _as_groups(B), _as_groups(C)))
        D_, bias_ = (None if t is None else t.to(dtype)[:, None] for t in (D, delta_bias))
        dt = _time_step(delta.to(dtype), bias_, delta_softplus)  # (b, d_inner, L)
        plan = None if u.device.type == "cpu" else _plan(dt, A_, max_chunk, segment_elements)
        if u.device.type == "cpu":
            segment = (
                _segment_length(u.shape[0], u.shape[1], A.shape[1], max_chunk, segment_elements)
                if backward_to_come else None
            )
            y, segment_states, h = scan_forward(dt, u_, A_, B_, C_, max_chunk, segment, block_elements)
            ctx.segment, ctx.chunk, ctx.block_elements = segment, max_chunk, block_elements
        else:
            y, segment_states, h = _closed_form_forward(dt, u_, A_, B_, C_, plan)
        if backward_to_come:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, segment_states)
            ctx.plan = plan
        ctx.delta_softplus = delta_softplus
        out = _finish(y, u_, D_, None if z is None else z.to(dtype))
        return out.to(u.dtype), h.reshape(u.shape[0], u.shape[1], -1).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out, grad_last_state):
        saved = ctx.saved_tensors  # once: under activation checkpointing a second read is an error
        backward = _cpu_backward if saved[0].device.type == "cpu" else _recompute_backward
        return (*backward(ctx, saved, grad_out, grad_last_state), *(None,) * 5)


def _cpu_backward(ctx, saved, grad_out, grad_last_state):
    """The gradients on CPU: the recurrence's by ``scan_cpu.scan_backward``; the time step's, the skip term's and
    the gate's by their derivatives."""
    u, delta, A, B, C, D, z, delta_bias, records = saved
    dtype = _compute_dtype(u)
    u_, A_, B_, C_, grad_out_ = (t.to(dtype) for t in (u, A, _as_groups(B), _as_groups(C), grad_out))
    D_, bias_ = (None if t is None else t.to(dtype)[:, None] for t in (D, delta_bias))
    # sequence-sized temporaries are what this pass's peak is made of: those this function owns are reused in place
    pre = delta.to(dtype) if bias_ is None else delta.to(dtype) + bias_
    owns_pre = pre is not delta
    dt = F.softplus(pre) if ctx.delta_softplus else pre
    grad_y = grad_out_ if z is None else grad_out_ * F.silu(z.to(dtype))
    grad_last = None if grad_last_state is None else grad_last_state.to(dtype).reshape(records.shape[1:])
    y, ddt, du, dA, dB, dC = scan_backward(
        dt, u_, A_, B_, C_, grad_y, grad_last, records, ctx.segment, ctx.chunk, ctx.block_elements
    )
    del dt
    dD = dz = dbias = None
    if D_ is not None:
        dD = (grad_y * u_).sum(dim=(0, 2))
        du.addcmul_(grad_y, D_)
        y.addcmul_(u_, D_)
    del grad_y
    if z is not None:
        z_ = z.to(dtype)
        sigmoid = torch.sigmoid(z_)
        dz = torch.rsub(sigmoid, 1).mul_(z_).add_(1).mul_(sigmoid).mul_(y).mul_(grad_out_)  # silu' = s (1 + z (1 - s))
        del sigmoid
    del y
    if ctx.delta_softplus:
        ddelta = ddt.mul_(pre.sigmoid_() if owns_pre else torch.sigmoid(pre))
    else:
        ddelta = ddt
    if delta_bias is not None:
        dbias = ddelta.sum(dim=(0, 2))
    dB, dC = (g if t.dim() == 4 else g.squeeze(1) for g, t in ((dB, B), (dC, C)))
    grads = (du, ddelta, dA, dB, dC, dD, dz, dbias)
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, (u, delta, A, B, C, D, z, delta_bias)))


def _recompute_backward(ctx, saved, grad_out, grad_last_state):
    """The gradients elsewhere (CUDA): each segment recomputed in closed form from its saved state, and
    differentiated by autograd, segment after segment from the last."""
    u, delta, A, B, C, D, z, delta_bias, segment_states = saved
    dtype = _compute_dtype(u)
    groups = _as_groups(B).shape[1]
    batch, d_inner, length = u.shape
    # Channel-major as saved, (b, g, channels, L); each segment is brought to time-major on its own, and its
    # gradients written back channel-major: no time-major copy of the whole sequences, nor of their gradients.
    sequences = [None if t is None else t.reshape(batch, groups, -1, length) for t in (u, delta, z)]
    sequences += [_as_groups(t) for t in (B, C)]
    sequences.append(grad_out.reshape(batch, groups, -1, length))
    params = [None if t is None else _per_group(t, groups, dtype).requires_grad_() for t in (A, D, delta_bias)]
    grad_sequences = [None if t is None else torch.empty(t.shape, dtype=dtype, device=t.device)
                      for t in sequences[:-1]]
    grad_params = [None if t is None else torch.zeros_like(t) for t in params]
    grad_h = torch.zeros_like(segment_states[0]) if grad_last_state is None else (
        grad_last_state.to(dtype).reshape(segment_states[0].shape)
    )
    for index in reversed(range(len(ctx.plan))):
        start, end, chunk = ctx.plan[index]
        w = slice(start, end)
        *pieces, grad_piece = [None if t is None else to_time_major(t[..., w].to(dtype)) for t in sequences]
        with torch.enable_grad():
            pieces = [None if t is None else t.requires_grad_() for t in pieces]
            h0 = segment_states[index].to(dtype).requires_grad_()
            u_c, delta_c, z_c, B_c, C_c = pieces
            A_, D_, bias_ = params
            dt = _time_step(delta_c, bias_, ctx.delta_softplus)
            y, h_end = _scan_segment(dt, u_c, A_, B_c, C_c, h0, chunk)
            out = _finish(y, u_c, D_, z_c)
            leaves = [t for t in pieces + params + [h0] if t is not None]
            grads = iter(torch.autograd.grad((out, h_end), leaves, (grad_piece, grad_h)))
        for target, piece in zip(grad_sequences, pieces):
            if piece is not None:
                from_time_major(next(grads), out=target[..., w])
        for target, param in zip(grad_params, params):
            if param is not None:
                target += next(grads)
        grad_h = next(grads)
    du, ddelta, dz, dB, dC = grad_sequences
    du, ddelta, dz = (None if g is None else g.view(batch, d_inner, length) for g in (du, ddelta, dz))
    dB, dC = (g if t.dim() == 4 else g.squeeze(1) for g, t in ((dB, B), (dC, C)))
    dA, dD, dbias = (None if g is None else g.reshape(-1, *g.shape[3:]) for g in grad_params)
    originals = (u, delta, A, B, C, D, z, delta_bias)
    grads_in = (du, ddelta, dA, dB, dC, dD, dz, dbias)
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads_in, originals))
