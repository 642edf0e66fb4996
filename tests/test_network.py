"""SegResMamba: shapes at any size, padding, options, input errors, the scan orders, gradients, MONAI config
resolution. Most networks here pad to 32 rather than 64 (``min_size=32``): a quarter to an eighth of the work."""

import pytest
import torch

from markers import needs_cuda_kernel
from custom_nets import SegResMamba
from custom_nets.blocks import DIRECTIONS, TriOrientedMamba
from custom_nets.blocks.tom import _from_order, _to_order


def small_net(**kwargs):
    torch.manual_seed(0)
    kwargs = dict(in_channels=1, out_channels=3, feature_size=8, min_size=32) | kwargs
    return SegResMamba(**kwargs)


@pytest.mark.parametrize(
    "size,options",
    [
        ((37, 45, 29), dict()),
        ((17, 30, 23), dict(min_size=64)),
        ((17, 64, 23), dict(skip_fusion="concat")),
        ((37, 45, 29), dict(use_tom=False)),
        ((17, 40, 23), dict(checkpointing=True)),
        ((33, 20, 31), dict(tom_positions=("full",))),
    ],
)
def test_output_has_input_size_and_trains(size, options):
    net = small_net(**options)
    x = torch.randn(1, 1, *size)
    y = net(x)
    assert y.shape == (1, 3, *size)
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_padding_rule_gives_the_same_answer():
    """An input that needs padding gives what the padded input gives, cropped back."""
    net = small_net().eval()
    x = torch.randn(1, 1, 40, 20, 50)
    padded = torch.nn.functional.pad(x, (0, 14, 0, 12, 0, 24))  # to 64 x 32 x 64, zeros at the end
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :40, :20, :50])


@pytest.mark.parametrize(
    "min_size,size,padded",
    [(64, (20, 40, 70), (64, 64, 96)), (32, (20, 40, 70), (32, 64, 96)), (96, (20, 100, 70), (96, 128, 96))],
)
def test_min_size_sets_the_smallest_padded_size(min_size, size, padded):
    with torch.device("meta"):  # shapes only
        net = small_net(min_size=min_size)
    seen = []
    net.stem.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[2:])))
    assert net(torch.empty(1, 1, *size, device="meta")).shape == (1, 3, *size)
    assert seen == [padded]


def test_min_size_errors_name_the_problem():
    with pytest.raises(ValueError, match="min_size must be a positive multiple of 32, got 48"):
        SegResMamba(min_size=48)
    with pytest.raises(ValueError, match=r"pads to 32\^3 with min_size=32.*one voxel"):
        small_net()(torch.zeros(1, 1, 20, 32, 9))


def test_ablation_options_change_the_model():
    base = small_net()
    assert not any(isinstance(m, TriOrientedMamba) for m in small_net(use_tom=False).modules())
    assert sum(isinstance(m, TriOrientedMamba) for m in base.modules()) == 8
    assert sum(isinstance(m, TriOrientedMamba) for m in small_net(tom_positions=("half",)).modules()) == 4
    concat = small_net(skip_fusion="concat")
    assert sum(p.numel() for p in concat.parameters()) > sum(p.numel() for p in base.parameters())
    with pytest.raises(ValueError, match="skip fusion"):
        small_net(skip_fusion="add")
    with pytest.raises(ValueError, match="unknown ToM position"):
        small_net(tom_positions=("middle",))


@pytest.mark.parametrize(
    "shape,message",
    [((1, 1, 32, 32), r"5D tensor \(batch, 1, D, H, W\), got shape \(1, 1, 32, 32\)"),
     ((1, 4, 32, 32, 32), r"expects 1 input channel\(s\), got 4")],
)
def test_input_errors_name_expected_and_received(shape, message):
    with pytest.raises(ValueError, match=message):
        small_net()(torch.zeros(shape))


def test_constructor_errors():
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        SegResMamba(spatial_dims=2)
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        SegResMamba(feature_size=12)


def test_scan_orders_match_hand_built_orders():
    depth, height, width = 3, 2, 4
    volume = torch.arange(depth * height * width).reshape(1, 1, depth, height, width)
    raster = volume.flatten(2)
    index = lambda d, h, w: (d * height + h) * width + w  # noqa: E731
    expected = {
        "forward": [index(d, h, w) for d in range(depth) for h in range(height) for w in range(width)],
        "reverse": [index(d, h, w) for d in range(depth) for h in range(height) for w in range(width)][::-1],
        # inter-slice: for every in-plane position, all slices in turn
        "inter_slice": [index(d, h, w) for h in range(height) for w in range(width) for d in range(depth)],
    }
    for name in DIRECTIONS:
        ordered = _to_order(raster, name, (depth, height, width))
        assert ordered.flatten().tolist() == expected[name], name
        assert torch.equal(_from_order(ordered, name, (depth, height, width)), raster)


def test_inter_slice_scan_follows_the_real_depth():
    """The inter-slice direction sees slices of the actual depth: moving one slice moves its tokens by one step."""
    tom = TriOrientedMamba(4)
    for spatial in [(5, 3, 2), (7, 2, 6)]:
        tokens = torch.arange(spatial[0] * spatial[1] * spatial[2]).reshape(1, 1, -1)
        ordered = _to_order(tokens, "inter_slice", spatial).flatten().tolist()
        plane = spatial[1] * spatial[2]
        assert ordered[: spatial[0]] == [d * plane for d in range(spatial[0])]
        assert tom(torch.randn(1, 4, *spatial)).shape == (1, 4, *spatial)


def test_every_direction_of_every_tom_receives_gradient():
    net = small_net()
    net(torch.randn(1, 1, 40, 20, 24)).square().mean().backward()
    toms = [m for m in net.modules() if isinstance(m, TriOrientedMamba)]
    assert len(toms) == 8
    for tom in toms:
        for name, scan in zip(DIRECTIONS, tom.scans):
            for param_name, param in scan.named_parameters():
                assert param.grad is not None and param.grad.abs().sum() > 0, (name, param_name)


def test_tom_recompute_keeps_only_the_input_and_gives_the_same_outputs_and_gradients():
    x = torch.randn(1, 8, 6, 5, 7, requires_grad=True)
    results = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        tom = TriOrientedMamba(8, recompute=recompute)
        saved = {}  # bytes per storage kept for backward: a tensor saved by several functions counts once

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = tom(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *tom.parameters()])
        results[recompute] = y, grads, sum(saved.values())
    # the same up to float rounding: with recompute the three projected directions are summed
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    for recomputed, kept in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(recomputed, kept, rtol=1e-5, atol=1e-5)
    x_bytes = x.numel() * x.element_size()
    assert results[True][2] <= x_bytes < results[False][2] / 10  # what the layer keeps for backward
    tom.backend = "torch"  # without gradients "auto" would take the compiled kernels
    with torch.no_grad():
        torch.testing.assert_close(tom(x), results[False][0].detach(), rtol=0, atol=0)
    net = small_net(tom_recompute=True)
    assert {m.recompute for m in net.modules() if isinstance(m, TriOrientedMamba)} == {True}


def test_monai_config_builds_the_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": {"_target_": "custom_nets.SegResMamba", "in_channels": 4,
                                           "out_channels": 3, "feature_size": 8}})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, SegResMamba) and net.in_channels == 4


@needs_cuda_kernel
def test_cuda_and_torch_backends_give_the_same_network():
    """The same weights give the same output and gradients with either scan backend (mamba-ssm's tolerance)."""
    torch.backends.cudnn.allow_tf32 = False  # compare the scans, not TF32 convolutions
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64, 64, device="cuda")
    results = {}
    for backend in ("torch", "cuda"):
        torch.manual_seed(0)
        net = SegResMamba(in_channels=1, out_channels=3, feature_size=16, scan_backend=backend).cuda()
        y = net(x)
        y.square().mean().backward()
        results[backend] = (y.detach(), {n: p.grad for n, p in net.named_parameters()})
    torch.testing.assert_close(results["cuda"][0], results["torch"][0], rtol=6e-4, atol=2e-3)
    for name, grad in results["torch"][1].items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(results["cuda"][1][name], grad, rtol=1.2e-3, atol=4e-3 * max(scale, 1e-3), msg=name)


def test_cpu_bfloat16_inference_only_where_the_cpu_has_it(monkeypatch):
    from custom_nets.networks import segresmamba

    net = small_net(cpu_bfloat16=True).eval()
    reference = small_net().eval()
    x = torch.randn(1, 1, 32, 32, 40)
    with torch.no_grad():
        expected = reference(x)
        monkeypatch.setattr(segresmamba, "cpu_has_bfloat16", lambda: True)
        low = net(x)
        monkeypatch.setattr(segresmamba, "cpu_has_bfloat16", lambda: False)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)  # float32 where the CPU lacks bfloat16
    assert low.dtype == torch.float32 and not torch.equal(low, expected)  # it ran in bfloat16
    # bfloat16 keeps 8 bits: within 5% of the logits' range almost everywhere, and nowhere far off
    error, scale = (low - expected).abs(), expected.abs().max().item()
    assert (error <= 0.05 * scale).float().mean() >= 0.999 and error.max() <= 0.2 * scale, (error.max(), scale)
    monkeypatch.setattr(segresmamba, "cpu_has_bfloat16", lambda: True)
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)  # with gradients: float32, training unchanged
