"""The ``"compiled"`` backend (C kernels built on first use) against the step-by-step reference and the torch path:
the scan, its orders of the steps, the conv1d, a whole ToM layer; when ``"auto"`` takes it; no compiler, no
writable cache."""

import tempfile

import pytest
import torch
import torch.nn.functional as F

from custom_nets.blocks import DIRECTIONS, TriOrientedMamba
from custom_nets.blocks.tom import _from_order, _scan_order, _to_order
from custom_nets.ops import BACKEND_ENV, causal_conv1d, resolve_backend, selective_scan, selective_scan_ref
from custom_nets.ops.compiled_kernel import CACHE_ENV, compiled_kernels
from custom_nets.ops.scan_compiled import compiled_causal_conv1d, compiled_scan
from test_selective_scan import OPTIONALS, make_inputs, split_args

pytestmark = pytest.mark.skipif(compiled_kernels()[0] is None, reason=f"no compiled kernel: {compiled_kernels()[1]}")


@pytest.fixture
def rebuilt_kernels():
    """``compiled_kernels`` built afresh in the test, and afresh again after it (its result is cached per process)."""
    compiled_kernels.cache_clear()
    yield compiled_kernels
    compiled_kernels.cache_clear()


@pytest.mark.parametrize("options", OPTIONALS)
@pytest.mark.parametrize("groups,d_inner", [(None, 6), (None, 40), (2, 40)])  # 40: whole and partial vectors
def test_compiled_scan_matches_stepwise_reference(options, groups, d_inner):
    inputs = make_inputs(d_inner=d_inner, groups=groups, length=37, dtype=torch.float32)
    args, kwargs = split_args(inputs, options)
    ref_args, ref_kwargs = split_args({name: t.double() for name, t in inputs.items()}, options)
    expected, expected_last = selective_scan_ref(*ref_args, **ref_kwargs, return_last_state=True)
    with torch.no_grad():
        out, last = selective_scan(*args, **kwargs, return_last_state=True, backend="compiled")
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.double(), expected_last, rtol=1e-4, atol=1e-4)


def test_compiled_scan_takes_strided_and_reduced_precision_inputs():
    inputs = make_inputs(d_inner=20, length=29, dtype=torch.float32)
    expected = selective_scan_ref(**{n: t.double() for n, t in inputs.items()}, delta_softplus=True)
    # time-major memory seen as (batch, d_inner, L), and B and C as slices of a wider tensor, as a layer makes them
    strided = {n: inputs[n].transpose(1, 2).contiguous().transpose(1, 2) for n in ("u", "delta", "z")}
    wide = torch.cat([inputs["B"], inputs["C"], inputs["B"]], dim=1).transpose(1, 2).contiguous().transpose(1, 2)
    strided.update(B=wide[:, :4], C=wide[:, 4:8])
    with torch.no_grad():
        out = selective_scan(**{**inputs, **strided}, delta_softplus=True, backend="compiled")
        half = selective_scan(**{**inputs, "u": inputs["u"].bfloat16()}, delta_softplus=True, backend="compiled")
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    assert half.dtype == torch.bfloat16  # u's dtype, as every backend returns


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_orders_of_the_steps_match_the_reordered_sequences(direction):
    """A raster-ordered sequence scanned (and convolved) in a direction's order gives what the torch path gives on
    the sequence reordered for that direction and put back."""
    spatial = (3, 4, 5)
    inputs = make_inputs(batch=1, d_inner=20, length=60, dtype=torch.float32)
    ordered = {n: _to_order(inputs[n], direction, spatial) for n in ("u", "delta", "B", "C", "z")}
    expected = _from_order(selective_scan_ref(**{**inputs, **ordered}, delta_softplus=True), direction, spatial)
    out = torch.empty(1, 60, 20).transpose(1, 2)
    with torch.no_grad():
        compiled_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                      inputs["delta_bias"], True, _scan_order(direction, spatial), out)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        compiled_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                      inputs["delta_bias"], True, _scan_order(direction, spatial), out, accumulate=True)
        torch.testing.assert_close(out, 2 * expected, rtol=1e-4, atol=1e-4)

        weight, bias = torch.randn(20, 1, 4), torch.randn(20)
        expected_conv = _from_order(causal_conv1d(ordered["u"], weight, bias), direction, spatial)
        conv = compiled_causal_conv1d(inputs["u"], weight, bias, _scan_order(direction, spatial), torch.empty_like(out))
        torch.testing.assert_close(conv, expected_conv, rtol=1e-5, atol=1e-5)


def test_time_steps_through_softplus_to_float32_precision():
    """One step with B = C = u = 1 and no skip term returns the time step itself: softplus, computed inline (its
    exp from 2^(x log2 e), whose float32 argument is rounded: a few 1e-6 relative where x is large)."""
    delta = torch.linspace(-30, 30, 961).reshape(1, 961, 1)
    ones = torch.ones(1, 1, 1)
    with torch.no_grad():
        out = selective_scan(torch.ones_like(delta), delta, -torch.ones(961, 1), ones, ones, delta_softplus=True,
                             backend="compiled")
    torch.testing.assert_close(out.double(), F.softplus(delta.double()), rtol=4e-6, atol=1e-30)


def test_time_steps_projected_inside_the_kernel_match_projected_ones():
    inputs = make_inputs(d_inner=20, length=31, dtype=torch.float32)
    low, weight = torch.randn(2, 3, 31), torch.randn(20, 3) * 0.3
    delta = torch.einsum("dr,brl->bdl", weight, low)
    expected = selective_scan_ref(**{n: t.double() for n, t in {**inputs, "delta": delta}.items()}, delta_softplus=True)
    out = torch.empty(2, 31, 20).transpose(1, 2)
    with torch.no_grad():
        compiled_scan(inputs["u"], low, inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                      inputs["delta_bias"], True, _scan_order("forward", (1, 1, 31)), out, delta_weight=weight)
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="rank of 65"):
            compiled_scan(inputs["u"], torch.randn(2, 65, 31), inputs["A"], inputs["B"], inputs["C"], None, None, None,
                          True, _scan_order("forward", (1, 1, 31)), out, delta_weight=torch.randn(20, 65))


@pytest.mark.parametrize("channels,spatial", [(12, (5, 6, 7)), (8, (4, 3, 9))])
def test_tom_layer_gives_the_torch_path_results(channels, spatial):
    torch.manual_seed(0)
    tom = TriOrientedMamba(channels).eval()
    x = torch.randn(2, channels, *spatial)
    with torch.no_grad():
        tom.backend = "torch"
        expected = tom(x)
        tom.backend = "compiled"
        out = tom(x)
        tom.backend = "auto"
        assert torch.equal(tom(x), out)  # "auto" takes the compiled kernels without gradients
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    tom.backend = "auto"
    torch.testing.assert_close(tom(x), expected, rtol=1e-5, atol=1e-5)  # with gradients: the torch path


def test_auto_takes_the_compiled_kernels_only_for_inference(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    u = torch.randn(1, 4, 8)
    with torch.no_grad():
        assert resolve_backend("auto", u) == "compiled"
        assert resolve_backend("auto", u.double()) == "torch"  # float64 stays float64 in the torch scan
    assert resolve_backend("auto", u) == "torch"
    inputs = make_inputs(dtype=torch.float32)
    inputs["u"].requires_grad_()
    with pytest.raises(RuntimeError, match="forward pass only"):
        selective_scan(**inputs, backend="compiled")


def test_without_a_compiler_the_scan_runs_in_torch(monkeypatch, rebuilt_kernels):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    kernels, reason = rebuilt_kernels()
    assert kernels is None and "/nonexistent/cc" in reason
    inputs = make_inputs(dtype=torch.float32)
    with torch.no_grad():
        assert resolve_backend("auto", inputs["u"]) == "torch"
        with pytest.raises(RuntimeError, match="could not be built here.*nonexistent"):
            selective_scan(**inputs, backend="compiled")


def test_a_cache_that_cannot_be_written_leaves_no_files(monkeypatch, tmp_path, rebuilt_kernels):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert rebuilt_kernels()[0] is not None
    assert list(temporary.iterdir()) == []  # built in a temporary folder, removed once loaded
    inputs = make_inputs(dtype=torch.float32)
    with torch.no_grad():
        out = selective_scan(**inputs, delta_softplus=True, backend="compiled")
    expected = selective_scan_ref(**{n: t.double() for n, t in inputs.items()}, delta_softplus=True)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_the_library_is_built_once_into_the_cache(monkeypatch, tmp_path, rebuilt_kernels):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert rebuilt_kernels()[0] is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # the library, no temporary file beside it
    stamp = built[0].stat().st_mtime_ns
    rebuilt_kernels.cache_clear()
    assert rebuilt_kernels()[0] is not None
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_conv1d_and_scan_refuse_what_the_kernels_cannot_take():
    x = torch.randn(1, 4, 10)
    out = torch.empty(1, 10, 4).transpose(1, 2)
    with torch.no_grad(), pytest.raises(ValueError, match="1 to 16 steps"):
        compiled_causal_conv1d(x, torch.randn(4, 1, 17), None, _scan_order("forward", (1, 2, 5)), out)
    inputs = make_inputs(d_state=65, dtype=torch.float32)
    with torch.no_grad(), pytest.raises(ValueError, match="d_state=65"):
        selective_scan(**inputs, backend="compiled")


def test_a_forked_child_runs_the_kernels_on_threads_of_its_own():
    """A process forked after the kernels' threads started (a DataLoader worker) gets none of them: it must start its
    own rather than wait on threads that do not exist in it."""
    import multiprocessing

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # one part per thread of the two vectors of channels below (with one, no threads)
    try:
        inputs = make_inputs(d_inner=40, dtype=torch.float32)
        with torch.no_grad():
            expected = selective_scan(**inputs, delta_softplus=True, backend="compiled")
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_scan_in_child, (inputs,)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _scan_in_child(inputs):
    with torch.no_grad():
        return selective_scan(**inputs, delta_softplus=True, backend="compiled")
