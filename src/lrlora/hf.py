"""The transformers ``Trainer`` integration (transformers is imported only here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from .controller import RankController


class LRLoRACallback(TrainerCallback):
    """Creates the :class:`RankController` when training starts, sees that it steps once
    per optimizer step (so gradient accumulation does not multiply the rank cost) and
    hardens the ranks when training ends. A controller on the Trainer's optimizer steps
    itself from its post-step hook (a step the gradient scaler skipped is not counted) and
    the callback's ``step()`` then does nothing; one built without the optimizer is stepped
    by that call.

    The rank parameters need their own learning rate (by default the controller updates
    them itself, at the rate of the optimizer group marked as the rank group, else at
    ``rank_lr``); give the Trainer an optimizer built from :func:`lrlora.optimizer_groups`,
    so that rate follows the Trainer's schedule::

        optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-3))
        trainer = Trainer(model, args, ..., optimizers=(optimizer, None),
                          callbacks=[LRLoRACallback()])

    A ``controller`` given here (built on the unwrapped model and the optimizer handed to
    the Trainer, for the Trainer's ``max_steps``) is used instead of a new one, e.g. to
    restore its state before training resumes; one that does not fit is refused with the
    reason, never replaced (its hooks would stay on the optimizer).
    Under DDP/FSDP (torchrun, accelerate launch) every process runs the callback; the
    callback handler hands it the unwrapped model, so the controller sees the adapters.
    """

    def __init__(
        self,
        harden_at_end: bool = True,
        log_every: int = 0,
        controller: RankController | None = None,
    ) -> None:
        self.controller = controller
        self.harden_at_end = harden_at_end
        self.log_every = log_every
        self.trajectory: list[dict[str, Any]] = []
        self._logged_step = 0  # the controller step of the last trajectory point

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        from accelerate.optimizer import AcceleratedOptimizer

        if isinstance(optimizer, AcceleratedOptimizer):  # the controller hooks the real one
            optimizer = optimizer.optimizer
        if self.controller is None:
            self.controller = RankController(model, optimizer, total_steps=state.max_steps)
        else:
            check_reusable(self.controller, optimizer, state.max_steps)
        loader = kwargs.get("train_dataloader")
        if self.controller.prunes and self.controller.probe is None and loader is not None:
            self.controller.probe = training_probe(
                model, loader, RankController.PROBE_BATCHES, args.device
            )

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.controller.step()  # a no-op when the optimizer's hook has stepped it
        step = self.controller.step_count
        # After a skipped optimizer step the controller's count has not moved: log it once.
        if self.log_every and step % self.log_every == 0 and step != self._logged_step:
            self.trajectory.append(snapshot(self.controller))
            self._logged_step = step

    def on_train_end(self, args, state, control, **kwargs):
        if self.harden_at_end:
            self.controller.harden()


def training_probe(
    model: torch.nn.Module, loader: Any, batches: int, device: torch.device
) -> Callable[[int], torch.Tensor]:
    """A probe for ``rank_update='prune'``: ``probe(i)`` is the model's loss on the i-th
    batch of the first rows of the training set, collated as training collates them (read
    from the dataset in order, so the training data's shuffling is not disturbed).

    Under data parallelism a batch is the global one (the per-process size times the number
    of processes) and each process takes its share of its rows; the controller sums the
    processes' measurements, so the components kept are those a single process with the
    same global batch keeps."""
    world, rank = 1, 0
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    dataset, collate = loader.dataset, loader.collate_fn
    # accelerate's loaders batch through their batch sampler and leave batch_size None
    per_process = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 1
    size = per_process * world
    rows = min(len(dataset), batches * size)
    if rows == 0:
        raise ValueError("rank_update='prune' needs training rows to probe, and there are none")
    chunks = [list(range(start, min(start + size, rows))) for start in range(0, rows, size)]
    chunks = [chunk[rank::world] or chunk for chunk in chunks]  # a share of every batch
    cached: dict[int, dict[str, Any]] = {}

    def probe(i: int) -> torch.Tensor:
        if i not in cached:
            batch = collate([dataset[j] for j in chunks[i % len(chunks)]])
            cached[i] = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return model(**cached[i]).loss

    return probe


def check_reusable(
    controller: RankController, optimizer: torch.optim.Optimizer | None, max_steps: int
) -> None:
    """Refuse a given controller the Trainer cannot drive as it is, saying why."""
    if controller.total_steps != max_steps:
        raise ValueError(
            f"the RankController given to LRLoRACallback plans {controller.total_steps} steps "
            f"but the Trainer will take {max_steps}: build it with total_steps={max_steps}."
        )
    if controller.optimizer is not None and controller.optimizer is not optimizer:
        raise ValueError(
            "the RankController given to LRLoRACallback hooks another optimizer than the "
            "Trainer's: build it on the optimizer passed as Trainer(optimizers=(optimizer, "
            "None)), or give no controller and let the callback build one."
        )


def snapshot(controller: RankController) -> dict[str, Any]:
    """One point of the rank trajectory: the controller's summary plus every layer's rho
    and hard rank."""
    layers = zip(controller.names, controller.layers, strict=True)
    return {
        **controller.summary(),
        "rho": {n: round(float(layer.rho.detach()), 4) for n, layer in layers},
        "hard_rank": controller.hard_ranks(),
    }
