"""The scan backends (torch, static, CUDA where present) against the step-by-step reference backend; backend
selection; shape errors."""

import pytest
import torch

import custom_nets.ops.scan_chunked as chunked
import custom_nets.ops.scan_cpu as scan_cpu
from markers import needs_cuda_kernel
from custom_nets import selective_scan
from custom_nets.ops import BACKEND_ENV, BACKENDS, selective_scan_ref


def make_inputs(batch=2, d_inner=6, d_state=4, length=23, groups=None, dtype=torch.float64, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).to(device)

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return dict(
        u=randn(batch, d_inner, length),
        delta=randn(batch, d_inner, length, scale=0.5),
        A=-(torch.rand(d_inner, d_state, generator=generator, dtype=dtype) * 4 + 0.1).to(device),
        B=randn(*bc_shape),
        C=randn(*bc_shape),
        D=randn(d_inner),
        z=randn(batch, d_inner, length),
        delta_bias=randn(d_inner, scale=0.3),
    )


# The torch backend's tuning for make_inputs' defaults (batch 2, d_inner 6, d_state 4): segments of 8 steps in
# chunks of 4, and on CPU forward blocks of 5 chunks (4 where states are recorded for backward). A length of 23
# crosses segment, block and chunk edges and pads them, and blocks of 5 chunks pad the groups that the states
# entering the chunks are found in.
SHORT_CHUNKS = dict(max_chunk=4, segment_elements=10 * 2 * 6 * 4, block_elements=2 * 6 * 4 * 4 * 5)


OPTIONALS = [
    pytest.param(dict(D=True, z=True, delta_bias=True, delta_softplus=True), id="all"),
    pytest.param(dict(D=False, z=False, delta_bias=False, delta_softplus=False), id="none"),
    pytest.param(dict(D=True, z=False, delta_bias=True, delta_softplus=True), id="no-z"),
    pytest.param(dict(D=False, z=True, delta_bias=False, delta_softplus=True), id="z-only"),
]


def split_args(inputs, options):
    kwargs = {name: inputs[name] if options[name] else None for name in ("D", "z", "delta_bias")}
    # without softplus, time steps must be positive themselves (negative ones make the recurrence grow)
    delta = inputs["delta"] if options["delta_softplus"] else inputs["delta"].abs()
    args = [inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"]]
    return args, dict(kwargs, delta_softplus=options["delta_softplus"])


@pytest.mark.parametrize("options", OPTIONALS)
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_torch_scan_matches_stepwise_reference(options, groups, dtype, tolerance):
    inputs = make_inputs(groups=groups, dtype=dtype)
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    args, kwargs = split_args(leaves, options)
    out, last = selective_scan(*args, **kwargs, return_last_state=True, backend="torch", **SHORT_CHUNKS)
    reference_leaves = {name: t.double().detach().requires_grad_() for name, t in inputs.items()}
    ref_args, ref_kwargs = split_args(reference_leaves, options)
    expected, expected_last = selective_scan_ref(*ref_args, **ref_kwargs, return_last_state=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(last.double(), expected_last, rtol=tolerance, atol=tolerance)

    grad_out = torch.randn_like(expected)
    used = [name for name in leaves if name in ("u", "delta", "A", "B", "C") or options[name]]
    grads = torch.autograd.grad(out, [leaves[n] for n in used], grad_out.to(dtype))
    expected_grads = torch.autograd.grad(expected, [reference_leaves[n] for n in used], grad_out)
    for name, grad, expected_grad in zip(used, grads, expected_grads):
        scale = expected_grad.abs().max().item() + 1.0
        torch.testing.assert_close(grad.double(), expected_grad, rtol=tolerance, atol=tolerance * scale, msg=name)


@pytest.mark.parametrize("options", OPTIONALS)
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_torch_scan_without_gradients_matches_stepwise_reference(options, groups, dtype, tolerance):
    """Inference: nothing is recorded for a backward pass, and the skip term and gate are applied in place."""
    inputs = make_inputs(groups=groups, dtype=dtype)
    args, kwargs = split_args(inputs, options)
    ref_args, ref_kwargs = split_args({name: t.double() for name, t in inputs.items()}, options)
    expected, expected_last = selective_scan_ref(*ref_args, **ref_kwargs, return_last_state=True)
    originals = [t.clone() for t in args]
    with torch.no_grad():
        out, last = selective_scan(*args, **kwargs, return_last_state=True, backend="torch", **SHORT_CHUNKS)
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(last.double(), expected_last, rtol=tolerance, atol=tolerance)
    for original, arg in zip(originals, args):
        torch.testing.assert_close(arg, original, rtol=0, atol=0)  # inputs untouched


def test_inference_records_no_states_for_backward(monkeypatch):
    """Under no_grad, parameters that require gradients (a network's D and delta_bias) record nothing."""
    recorded = []
    scan_forward = chunked.scan_forward

    def spy(*args):
        recorded.append(args[6])  # record_every: None when nothing is recorded
        return scan_forward(*args)

    monkeypatch.setattr(chunked, "scan_forward", spy)
    inputs = make_inputs(dtype=torch.float32)
    parameters = {name: torch.nn.Parameter(inputs.pop(name)) for name in ("D", "delta_bias")}
    with torch.no_grad():
        selective_scan(**inputs, **parameters, delta_softplus=True, backend="torch")
    selective_scan(**inputs, **parameters, delta_softplus=True, backend="torch")
    assert recorded[0] is None and recorded[1] is not None


def test_tuning_arguments_reach_the_cpu_forward(monkeypatch):
    """``max_chunk`` and ``segment_elements`` set the chunk and the recorded segments, ``block_elements`` the block."""
    calls = []
    scan_forward = chunked.scan_forward

    def spy(*args):
        calls.append(args[5:])  # chunk, record_every, block_elements
        return scan_forward(*args)

    monkeypatch.setattr(chunked, "scan_forward", spy)
    leaves = {name: t.requires_grad_() for name, t in make_inputs(dtype=torch.float32).items()}
    selective_scan(**leaves, delta_softplus=True, backend="torch", **SHORT_CHUNKS)
    selective_scan(**leaves, delta_softplus=True, backend="torch")
    assert calls == [(4, 8, SHORT_CHUNKS["block_elements"]), (16, (1 << 18) // (2 * 6 * 4 * 16) * 16, 1 << 20)]
    with pytest.raises(ValueError, match="must be positive"):
        selective_scan(**leaves, backend="torch", max_chunk=0)


def test_torch_scan_passes_gradcheck_in_float64():
    inputs = make_inputs(batch=1, d_inner=2, d_state=2, length=12)
    leaves = [t.requires_grad_() for t in inputs.values()]

    def run(u, delta, A, B, C, D, z, delta_bias):  # segments of 6 steps in chunks of 3
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, True, return_last_state=True, backend="torch",
                              max_chunk=3, segment_elements=5 * 2 * 2)

    assert torch.autograd.gradcheck(run, leaves)


def test_chunks_follow_the_decay_bound():
    """Large time steps force short chunks; results stay finite and exact."""
    inputs = make_inputs(length=300)
    inputs["delta"] = inputs["delta"] * 40
    out = selective_scan(**inputs, delta_softplus=True, backend="torch")
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_backward_keeps_no_full_state_tensor():
    """What the scan saves for backward is its inputs and a few states, never a (batch, d_inner, L, d_state) tensor."""
    batch, d_inner, d_state, length = 1, 8, 64, 4096
    inputs = make_inputs(batch=batch, d_inner=d_inner, d_state=d_state, length=length, dtype=torch.float32)
    leaves = {name: t.requires_grad_() for name, t in inputs.items()}
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(**leaves, delta_softplus=True, backend="torch")
    full_state = batch * d_inner * length * d_state
    assert max(sizes) <= batch * max(d_inner, d_state) * length  # the largest input
    assert sum(sizes) < full_state / 2


@pytest.mark.parametrize("groups", [None, 2])
def test_closed_form_forward_matches_stepwise_reference(groups):
    """The forward that CUDA tensors take (on CPU the forward steps through chunks instead), checked here on CPU."""
    inputs = make_inputs(groups=groups)
    expected, expected_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    dt = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    B, C = (t.unsqueeze(1) if t.dim() == 3 else t for t in (inputs["B"], inputs["C"]))
    plan = chunked._plan(dt, inputs["A"], SHORT_CHUNKS["max_chunk"], SHORT_CHUNKS["segment_elements"])
    assert len(plan) > 1
    y, states, last = chunked._closed_form_forward(dt, inputs["u"], inputs["A"], B, C, plan)
    out = (y + inputs["u"] * inputs["D"][:, None]) * torch.nn.functional.silu(inputs["z"])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last.reshape(expected_last.shape), expected_last, rtol=1e-10, atol=1e-10)
    assert states.shape[0] == len(plan)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("chunks", [1, 2, 5, 7, 16, 40])
def test_states_entering_chunks_in_groups_match_one_chunk_after_another(chunks, reverse):
    generator = torch.Generator().manual_seed(chunks)
    decay = torch.rand(2, 3, chunks, 4, 5, generator=generator, dtype=torch.float64)
    local_end = torch.randn(2, 3, chunks, 4, 5, generator=generator, dtype=torch.float64)
    h = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64)
    expected = [None] * chunks
    for k in reversed(range(chunks)) if reverse else range(chunks):
        expected[k] = h
        h = decay[:, :, k] * h + local_end[:, :, k]
    recurrence = scan_cpu._BlockRecurrence((2, 3, chunks, 1, 4, 5), torch.float64)  # groups padded to a whole size
    recurrence.chunk_decay.copy_(decay)
    recurrence.local_end.copy_(local_end)
    last = recurrence.chain(reverse)(expected[-1 if reverse else 0])
    torch.testing.assert_close(recurrence.entering, torch.stack(expected, dim=2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_block_recurrence_matches_a_loop_over_steps(reverse):
    """``_BlockRecurrence.run`` over (batch, groups, chunks, chunk, ...) against one step after another."""
    shape = (1, 2, 7, 3, 4, 5)
    generator = torch.Generator().manual_seed(1)
    decay = torch.rand(shape, generator=generator, dtype=torch.float64)
    inputs = torch.randn(shape, generator=generator, dtype=torch.float64)
    start = torch.randn(1, 2, 4, 5, generator=generator, dtype=torch.float64)
    steps_a, steps_x = decay.flatten(2, 3).unbind(2), inputs.flatten(2, 3).unbind(2)
    expected, h = [None] * len(steps_a), start
    for t in reversed(range(len(steps_a))) if reverse else range(len(steps_a)):
        h = expected[t] = steps_a[t] * h + steps_x[t]
    recurrence = scan_cpu._BlockRecurrence(shape, torch.float64, ("decay", "inputs", "states"))
    recurrence.buffers["decay"].copy_(decay)
    recurrence.buffers["inputs"].copy_(inputs)
    recurrence.chunk_decay.copy_(decay.prod(dim=3))
    last = recurrence.run(start, inputs="inputs", out="states", reverse=reverse)
    states = recurrence.buffers["states"].flatten(2, 3)
    torch.testing.assert_close(states, torch.stack(expected, dim=2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_without_gradients_matches_torch(dtype):
    """The forward's softplus (log1p by a corrected log) against torch's, from underflow to the linear range."""
    x = torch.cat([torch.linspace(-80, 80, 20001, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, float("inf"), float("-inf")],
                                dtype=torch.float64)]).to(dtype)
    expected = torch.nn.functional.softplus(x.double())
    expected = torch.where(x.double() > 20, x.double() + torch.exp(-x.double()), expected)  # torch returns x there
    with torch.no_grad():
        got, got_in_place = chunked._softplus(x), chunked._softplus(x.clone(), in_place=True)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=4 * torch.finfo(dtype).eps, atol=0)
    torch.testing.assert_close(got_in_place, got, rtol=0, atol=0)


def test_static_scan_matches_stepwise_reference():
    """The export backend, with time steps so large that decays pass float32's range within a chunk: at least as
    close to the float64 reference as the torch backend gets in float32."""
    torch.manual_seed(0)
    batch, d_inner, d_state, length = 2, 6, 16, 300
    u, z = torch.randn(batch, d_inner, length), torch.randn(batch, d_inner, length)
    delta = torch.randn(batch, d_inner, length) * 2
    A = -torch.rand(d_inner, d_state) * 16
    B, C = torch.randn(batch, d_state, length), torch.randn(batch, d_state, length)
    D, bias = torch.randn(d_inner), torch.randn(d_inner)
    args = (u, delta, A, B, C, D, z, bias, True)
    expected, expected_state = selective_scan_ref(*(t.double() if torch.is_tensor(t) else t for t in args), True)
    got, state = selective_scan(*args, return_last_state=True, backend="static")
    torch_scan, torch_state = selective_scan(*args, return_last_state=True, backend="torch")
    for ours, theirs, reference in ((got, torch_scan, expected), (state, torch_state, expected_state)):
        error = (ours.double() - reference).abs().max().item()
        assert error <= max(2 * (theirs.double() - reference).abs().max().item(), 1e-5), error
    short, _ = selective_scan(*args, return_last_state=True, backend="static", chunk=8)  # padded: 300 = 37 * 8 + 4
    torch.testing.assert_close(short.double(), expected, rtol=1e-4, atol=1e-4)


def test_backend_selection(monkeypatch):
    inputs = make_inputs(dtype=torch.float32)
    assert set(BACKENDS) == {"torch", "cuda", "compiled", "static", "reference"}
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        selective_scan(**inputs, backend="cuda")
    with pytest.raises(ValueError, match="scan backend must be one of"):
        selective_scan(**inputs, backend="triton")
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        selective_scan(**inputs)  # "auto" honours the environment variable, never falls back silently
    monkeypatch.setenv(BACKEND_ENV, "reference")
    calls = []
    monkeypatch.setitem(BACKENDS, "reference", lambda *args: calls.append(args) or selective_scan_ref(*args))
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True), expected)
    assert len(calls) == 1
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True, backend="torch"), expected)
    assert len(calls) == 1  # a backend asked for by name is not replaced
    monkeypatch.setenv(BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        selective_scan(**inputs)


@pytest.mark.parametrize(
    "name,shape,message",
    [
        ("u", (2, 6), "u must be"),
        ("A", (5, 4), "A must be"),
        ("B", (2, 3, 23), "B must be"),
        ("C", (2, 4, 4, 23), "groups, which do not divide"),
        ("D", (7,), "D must have shape"),
        ("z", (2, 6, 22), "z must have shape"),
    ],
)
def test_shape_errors_name_expected_and_received(name, shape, message):
    inputs = make_inputs(dtype=torch.float32)
    inputs[name] = torch.zeros(shape)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs, backend="torch")


@needs_cuda_kernel
@pytest.mark.parametrize("options", OPTIONALS)
@pytest.mark.parametrize("groups", [None, 2])
def test_cuda_kernel_matches_torch_backend(options, groups):
    inputs = make_inputs(batch=2, d_inner=64, d_state=16, length=777, groups=groups, dtype=torch.float32, device="cuda")
    results = {}
    for backend in ("torch", "cuda"):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        args, kwargs = split_args(leaves, options)
        out = selective_scan(*args, **kwargs, backend=backend)
        used = [name for name in leaves if name in ("u", "delta", "A", "B", "C") or options[name]]
        grad_out = torch.ones_like(out).normal_(generator=torch.Generator("cuda").manual_seed(1))
        results[backend] = (out, torch.autograd.grad(out, [leaves[n] for n in used], grad_out), used)
    torch.testing.assert_close(results["cuda"][0], results["torch"][0], rtol=6e-4, atol=2e-3)
    for name, grad, expected in zip(results["torch"][2], results["cuda"][1], results["torch"][1]):
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            grad, expected, rtol=1.2e-3, atol=4e-3 * max(scale, 1.0), msg=lambda text, name=name: f"{name}: {text}"
        )


def test_float32_gradients_stay_finite_where_chunks_reach_the_decay_bound():
    """Time steps that bring every chunk's decay sum close to its bound (exp(-59.7) after 3 steps of 19.9):
    float32 gradients are finite and match the reference. Segments of 64 steps: several, as in a long sequence."""
    generator = torch.Generator().manual_seed(3)
    batch, d_inner, d_state, length = 1, 16, 16, 300
    inputs = make_inputs(batch, d_inner, d_state, length, dtype=torch.float32)
    inputs["A"] = -torch.arange(1.0, d_state + 1).repeat(d_inner, 1)
    inputs["delta_bias"] = torch.zeros(d_inner)
    inputs["delta"] = 0.9045 - 1e-3 * torch.rand(batch, d_inner, length, generator=generator)  # dt ~ 1.244
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend="torch", segment_elements=16 * 16 * 16 * 4)
    grads = torch.autograd.grad(out.sum(), list(leaves.values()))
    reference = {name: t.double().requires_grad_() for name, t in inputs.items()}
    expected = selective_scan_ref(**reference, delta_softplus=True)
    expected_grads = torch.autograd.grad(expected.sum(), list(reference.values()))
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    for name, grad, expected_grad in zip(leaves, grads, expected_grads):
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-3, atol=1e-3 * (expected_grad.abs().max().item() + 1), msg=name)


def test_reduced_precision_matmul_settings_do_not_change_the_scan():
    """Under a lower float32 matmul precision the scan takes its cumsum path and stays exact."""
    inputs = make_inputs(dtype=torch.float32)
    expected = selective_scan_ref(**{n: t.double() for n, t in inputs.items()}, delta_softplus=True)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        out = selective_scan(**inputs, delta_softplus=True, backend="torch", **SHORT_CHUNKS)
    finally:
        torch.set_float32_matmul_precision(previous)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [None, 2])
def test_recompute_backward_that_cuda_tensors_take_matches_stepwise_reference(groups):
    """On CPU the backward pass is ``scan_cpu.scan_backward``; CUDA tensors recompute each segment in closed form
    and differentiate it by autograd (``_recompute_backward``), checked here on CPU with the closed-form forward."""
    from types import SimpleNamespace

    inputs = make_inputs(groups=groups)
    args = [inputs[n] for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    u, delta, A, B, C, D, z, bias = args
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    plan = chunked._plan(dt, A, 4, SHORT_CHUNKS["segment_elements"])
    _, segment_states, _ = chunked._closed_form_forward(dt, u, A, chunked._as_groups(B), chunked._as_groups(C), plan)
    ctx = SimpleNamespace(plan=plan, delta_softplus=True)
    grad_out, grad_last = torch.randn_like(u), torch.randn(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    grads = chunked._recompute_backward(ctx, (*args, segment_states), grad_out, grad_last)
    leaves = [t.clone().requires_grad_() for t in args]
    expected, last = selective_scan_ref(*leaves[:5], *leaves[5:7], leaves[7], True, return_last_state=True)
    expected_grads = torch.autograd.grad((expected, last), leaves, (grad_out, grad_last))
    for name, grad, expected_grad in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10, msg=name)
