"""The optimizer's step inside the backward pass: the same weights as stepping after it, one gradient alive at a
time, and a MONAI trainer that runs it as the bundles configure it."""

import copy

import pytest
import torch
import torch.nn as nn

from custom_nets.handlers import StepInBackward


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(4, 2, 1))


def two_groups(model: nn.Module, optimizer=torch.optim.AdamW) -> torch.optim.Optimizer:
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return optimizer([{"params": weights}, {"params": biases, "lr": 3e-3, "weight_decay": 0.0}], lr=1e-3)


@pytest.mark.parametrize("optimizer", [torch.optim.AdamW, torch.optim.SGD])
def test_the_same_weights_as_stepping_after_backward(optimizer):
    batches = [torch.randn(2, 1, 6, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    reference, fused = small_model(), small_model()
    expected_optimizer, fused_optimizer = two_groups(reference, optimizer), two_groups(fused, optimizer)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5) for o in (expected_optimizer, fused_optimizer)]
    for x in batches:
        expected_optimizer.zero_grad(set_to_none=True)
        reference(x).square().mean().backward()
        expected_optimizer.step()
        schedulers[0].step()
    with StepInBackward(fused_optimizer):
        for x in batches:
            fused(x).square().mean().backward()
            fused_optimizer.step()  # finds no gradient: a trainer's own step does nothing
            schedulers[1].step()
    for expected, got in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert got.grad is None
    state, expected_state = fused_optimizer.state_dict(), expected_optimizer.state_dict()
    assert state["param_groups"] == expected_state["param_groups"]
    assert state["state"].keys() == expected_state["state"].keys()


def test_one_gradient_is_alive_at_a_time():
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters())
    alive, params = [], list(model.parameters())
    for p in params:  # registered first, so it runs before the step's hook
        p.register_post_accumulate_grad_hook(lambda _: alive.append(sum(q.grad is not None for q in params)))
    with StepInBackward(optimizer):
        model(torch.randn(1, 1, 6, 6, 6)).sum().backward()
    assert alive == [1] * len(params)
    model(torch.randn(1, 1, 6, 6, 6)).sum().backward()  # hooks removed on exit: gradients stay
    assert all(p.grad is not None for p in model.parameters())


def test_gradients_from_before_are_dropped_not_applied():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    before = copy.deepcopy(model)  # without the gradients
    x = torch.randn(1, 1, 6, 6, 6)
    with StepInBackward(optimizer):
        model(x).sum().backward()
    before(x).sum().backward()
    for p, q in zip(model.parameters(), before.parameters()):
        torch.testing.assert_close(p, q.detach() - 0.1 * q.grad)


def test_a_monai_trainer_runs_it_and_refuses_what_needs_all_gradients():
    from monai.engines import SupervisedTrainer

    data = [{"image": torch.randn(1, 1, 6, 6, 6), "label": torch.randn(1, 2, 6, 6, 6)} for _ in range(3)]

    def trainer(model, optimizer, handlers, **options):
        return SupervisedTrainer(device=torch.device("cpu"), max_epochs=2, train_data_loader=data, network=model,
                                 optimizer=optimizer, loss_function=nn.MSELoss(), train_handlers=handlers, **options)

    reference, fused = small_model(), small_model()
    expected_optimizer, fused_optimizer = torch.optim.Adam(reference.parameters()), torch.optim.Adam(fused.parameters())
    trainer(reference, expected_optimizer, []).run()
    step = StepInBackward(fused_optimizer)
    trainer(fused, fused_optimizer, [step]).run()
    for expected, got in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not step._handles  # removed when the run completed
    with pytest.raises(ValueError, match="accumulation"):
        trainer(small_model(), fused_optimizer, [StepInBackward(fused_optimizer)], accumulation_steps=2).run()
    disabled = StepInBackward(fused_optimizer, enabled="false")
    trainer(small_model(), fused_optimizer, [disabled], accumulation_steps=2).run()  # off: not in the way
    with pytest.raises(ValueError, match="enabled must be true or false"):
        StepInBackward(fused_optimizer, enabled="sometimes")
