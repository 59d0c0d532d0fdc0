"""The transformers ``Trainer`` as ``lrlora train`` uses it (transformers is imported here).

:class:`FiniteLossTrainer` stops at the first NaN/inf loss; :class:`RankTrajectory` records
the method's ranks every N steps and adds the method's values (LR-LoRA: tau, lambda) to the
training log that the progress bar prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback

from .train import NonFiniteLossError

if TYPE_CHECKING:
    from .methods import Method


class FiniteLossTrainer(Trainer):
    """A ``Trainer`` that raises :class:`NonFiniteLossError` naming the step where the loss
    stopped being finite (the stock one averages it away when logging)."""

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(step=self.state.global_step + 1, loss=float(loss))
        return loss


class RankTrajectory(TrainerCallback):
    """``points``: the method's ranks at step 0, every ``every`` optimizer steps and at the
    end of training. Place it after the method's own callbacks, so that the last point is
    taken after LR-LoRA has hardened its ranks."""

    def __init__(self, method: Method, every: int) -> None:
        self.method = method
        self.every = every
        self.points: list[dict[str, Any]] = []

    def _record(self, step: int) -> None:
        point = {**self.method.ranks_now(), "step": step}
        if self.points and self.points[-1]["step"] == step:
            self.points[-1] = point  # the end of training replaces the last periodic point
        else:
            self.points.append(point)

    def on_train_begin(self, args, state, control, **kwargs):
        self._record(0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._record(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._record(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            extra = self.method.log_values()
            logs.update(extra)  # printed by the progress bar, which runs after this callback
            state.log_history[-1].update(extra)
