"""The transformers ``Trainer`` as ``lrlora train`` uses it (transformers is imported here).

:class:`RunTrainer` stops at the first NaN/inf loss and checkpoints in lrlora's own format;
:class:`RankTrajectory` records the method's ranks every N steps and adds the method's values
(LR-LoRA: tau, lambda) to the training log that the progress bar prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import ProgressCallback, Trainer, TrainerCallback

from ..export import load_optimizer, save_optimizer
from ..inject import lora_layers
from ..util import BadFileError, write_json_atomic
from . import checkpoint

if TYPE_CHECKING:
    from .methods import Method


class NonFiniteLossError(RuntimeError):
    """The training loss, or a trained parameter, became NaN or infinite.

    Args:
        step: the optimizer step it happened at.
        loss: the loss, or None when parameters were found non-finite before a checkpoint.
        bad: names of the trainable tensors holding NaN/inf (values, then gradients).
        checkpoint: the last good checkpoint, if any.
    """

    def __init__(
        self,
        step: int,
        loss: float | None,
        bad: list[str] | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        what = "trained parameters are not finite" if loss is None else f"training loss is {loss}"
        lines = [f"{what} at step {step}: training stopped and no run directory was written."]
        if bad:
            more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            lines.append(f"Non-finite: {', '.join(bad[:4])}{more}.")
        if checkpoint is not None:
            lines.append(
                f"The last good checkpoint is {checkpoint}: rerun the same command with --resume "
                "and a lower --lr (or --rank-lr) to continue from it."
            )
        else:
            lines.append("Lower --lr (or --rank-lr) or check the data.")
        super().__init__(" ".join(lines))
        self.step, self.bad, self.checkpoint = step, list(bad or []), checkpoint


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the trainable parameters holding NaN/inf, then of those whose gradient
    does (``<name>.grad``); LR-LoRA's rank parameters (rho) first in each group."""
    ranks = {id(layer.rho) for _, layer in lora_layers(model)}
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params.sort(key=lambda item: id(item[1]) not in ranks)  # stable: rho first
    values = [name for name, p in params if not torch.isfinite(p).all()]
    grads = [name for name, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
    return values + [f"{name}.grad" for name in grads]


class RunTrainer(Trainer):
    """A ``Trainer`` that raises :class:`NonFiniteLossError` at the first NaN/inf loss (the
    stock one averages it away when logging), naming the step, the tensors that went bad
    and the last good checkpoint, and that checkpoints in the format of
    :mod:`lrlora.checkpoint` (nothing pickled, adapter-sized) instead of its own.

    ``train(resume_from_checkpoint=...)`` keeps the Trainer's own resume logic (global step,
    log history, the data order and the batches to skip); the hooks below read our files.

    Args (besides the Trainer's):
        method: the method being trained; saves and restores its own state.
        trajectory: the :class:`RankTrajectory` among the callbacks (saved with checkpoints).
        run_args: the run's ``TrainArgs`` as a dict (saved; learning rates read on resume).
        checkpoints: the directory checkpoints are written to.
    """

    def __init__(
        self,
        *args: Any,
        method: Method,
        trajectory: RankTrajectory,
        run_args: dict[str, Any],
        checkpoints: Path,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # A sequence classifier's loss is already the batch mean; a forward taking **kwargs
        # would make the Trainer treat it as a sum over tokens and multiply it by the number
        # of processes under DDP (transformers 5), doubling the gradient on 2 processes.
        self.model_accepts_loss_kwargs = False
        self.method, self.rank_trajectory = method, trajectory
        self.run_args, self.checkpoints = run_args, Path(checkpoints)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            bad = non_finite_tensors(self.model)
            raise NonFiniteLossError(step, float(loss), bad, checkpoint.latest(self.checkpoints))
        return loss

    def close_progress_bars(self) -> None:
        """End the progress bars' line, so that what is printed next (an error after a failed
        step or resume) starts on a line of its own."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback):
                for bar in (callback.training_bar, callback.prediction_bar):
                    if bar is not None:
                        bar.close()
                callback.training_bar = callback.prediction_bar = None

    # -- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self, model: nn.Module, trial: Any, *args: Any, **kwargs: Any) -> None:
        """Write this step's checkpoint atomically; every process adds its RNG state. Not at
        the last step: the run is about to be published (and a resume from there would
        take one step too many when it ends mid-epoch)."""
        step = self.state.global_step
        if step >= self.state.max_steps:
            return
        bad = [name for name in non_finite_tensors(self.model) if not name.endswith(".grad")]
        if bad:  # never replace a good checkpoint with a broken one
            raise NonFiniteLossError(step, None, bad, checkpoint.latest(self.checkpoints))
        self.store_flos()
        main = self.is_world_process_zero()
        if main:
            self._write_state(checkpoint.begin(self.checkpoints, step))
        self.accelerator.wait_for_everyone()
        tmp = checkpoint.staging_dir(self.checkpoints, step)
        checkpoint.save_rng_state(tmp / f"rng-{self.args.process_index}.safetensors")
        self.accelerator.wait_for_everyone()
        if main:
            checkpoint.publish(tmp, self.checkpoints)

    def _write_state(self, path: Path) -> None:
        self.method.save_state(path / "model")
        save_optimizer(self.optimizer, path)
        write_json_atomic(path / "scheduler.json", self.lr_scheduler.state_dict())
        self.state.save_to_json(str(path / "trainer_state.json"))
        write_json_atomic(path / "trajectory.json", self.rank_trajectory.points)
        run = {"args": self.run_args, "world_size": self.args.world_size}
        write_json_atomic(path / "run.json", run)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Nothing yet: the model is restored with the optimizer, once it is prepared."""

    def _load_optimizer_and_scheduler(self, resume_from_checkpoint: str | None) -> None:
        """Restore the method's state, the optimizer, the scheduler, the trajectory and the
        learning rates; a file that does not fit is a :class:`checkpoint.CheckpointError`."""
        if resume_from_checkpoint is None:
            return
        path = Path(resume_from_checkpoint)
        try:
            self.method.load_state(path / "model")
            load_optimizer(self.optimizer, path)
        except BadFileError as err:
            raise checkpoint.damaged(err) from None
        scheduler = checkpoint.read_checked(path / "scheduler.json", dict)
        checkpoint.same_keys_and_kinds(
            path / "scheduler.json", scheduler, self.lr_scheduler.state_dict()
        )
        self.lr_scheduler.load_state_dict(scheduler)
        trajectory = checkpoint.read_checked(path / "trajectory.json", checkpoint.TRAJECTORY_SHAPE)
        self.rank_trajectory.points = trajectory
        self._change_learning_rates(checkpoint.read_run(path)["args"])

    def _change_learning_rates(self, saved: dict[str, Any]) -> None:
        """A resume may change --lr / --rank-lr (e.g. lower them after a divergence): scale
        each group's rate, now and in the schedule, by new / saved."""
        for index, group in enumerate(self.optimizer.param_groups):
            key = "rank_lr" if group.get("lrlora_rank") else "lr"
            factor = self.run_args[key] / saved[key]
            group["lr"] *= factor
            if "initial_lr" in group:  # set by the scheduler
                group["initial_lr"] *= factor
            self.lr_scheduler.base_lrs[index] *= factor

    def _load_scaler(self, resume_from_checkpoint: str | None) -> None:
        """Nothing: lrlora train uses no gradient scaler, and a checkpoint's ``scaler.pt``
        (a pickle) is refused by :func:`checkpoint.verify`, never loaded."""

    def _load_rng_state(self, resume_from_checkpoint: str | None) -> None:
        if resume_from_checkpoint is not None:
            name = f"rng-{self.args.process_index}.safetensors"
            checkpoint.load_rng_state(Path(resume_from_checkpoint) / name)


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
        if state.global_step == 0:  # a resumed run restored its points from the checkpoint
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
