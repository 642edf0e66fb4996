"""The optimizer's step taken inside the backward pass, one parameter at a time, so that all gradients are never
alive at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .training_checkpoint import parse_flag

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["StepInBackward"]


class StepInBackward:
    """Update each parameter as soon as the backward pass has finished its gradient, then free that gradient.

    A training step usually keeps every parameter's gradient until the optimizer runs: as much memory again as the
    weights (260 MiB for SegResMamba's 68 M parameters), alive at the backward pass's peak. Here the optimizer's
    update of a parameter runs in its post-accumulate-grad hook, with that parameter's gradient only, and the
    gradient is dropped at once. For an optimizer whose update of one parameter depends on that parameter's gradient
    and state only (Adam, AdamW, SGD with momentum: every ``torch.optim`` optimizer but LBFGS) the weights come out
    the same as with ``optimizer.step()`` after ``backward()``; learning-rate schedulers and the optimizer's state
    dict work as before. Not with what needs all gradients at once: clipping by their global norm, gradient
    accumulation, AMP's ``GradScaler`` (it unscales and checks all of them), or ``DistributedDataParallel`` (it
    averages them after the hooks ran).

    As an ignite handler (``attach``) the hooks live while the trainer runs; the trainer's own ``optimizer.step()``
    then finds no gradient and does nothing. Elsewhere, as a context manager around the training loop::

        with StepInBackward(optimizer):
            loss.backward()  # the parameters are updated; their gradients are None

    Args:
        optimizer: the training's optimizer.
        enabled: ``False`` makes the handler do nothing (bundles turn it off where AMP's scaler runs); a boolean or
            ``"true"``/``"false"``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, enabled: bool | str = True) -> None:
        self.optimizer = optimizer
        self.enabled = parse_flag(enabled, "enabled")
        self._group = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        self._handles: list = []

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start_for)
        engine.add_event_handler(Events.COMPLETED | Events.TERMINATE, lambda _: self.stop())
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._stop_and_raise)

    def _stop_and_raise(self, engine: Engine, error: BaseException) -> None:
        self.stop()
        raise error  # ignite passes an exception to its handlers instead of raising it: raise it on

    def _start_for(self, engine: Engine) -> None:
        """``start`` for a trainer, once it is built (its scaler and accumulation are set after its handlers)."""
        if getattr(engine, "scaler", None) is not None:
            raise ValueError("StepInBackward cannot run beside AMP's GradScaler, which needs every gradient at once: "
                             "turn it off (enabled false) where amp is on")
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError("StepInBackward cannot accumulate gradients over iterations (accumulation_steps > 1)")
        if isinstance(getattr(engine, "network", None), torch.nn.parallel.DistributedDataParallel):
            raise ValueError("StepInBackward cannot run under DistributedDataParallel, which averages the gradients "
                             "after the hooks would have used them")
        self.start()

    def start(self) -> None:
        """Drop gradients left from before (they would be applied with the next ones) and register the hooks; a
        second call, or a call with ``enabled`` false, does nothing."""
        if self._handles or not self.enabled:
            return
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        self._handles = [p.register_post_accumulate_grad_hook(self._step) for p in params]

    def stop(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _step(self, param: torch.Tensor) -> None:
        # the optimizer steps over its groups' parameters that have a gradient: its group is narrowed to this one
        group = self._group[id(param)]
        params, group["params"] = group["params"], [param]
        try:
            self.optimizer.step()
        finally:
            group["params"] = params
        param.grad = None

    def __enter__(self) -> StepInBackward:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
