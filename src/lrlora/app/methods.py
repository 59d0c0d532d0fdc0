"""The methods ``lrlora train`` compares, behind one small interface (:class:`Method`).

- :class:`LRLoRAMethod`: :func:`lrlora.inject` in budget mode, AdamW over
  :func:`lrlora.optimizer_groups` (rho at its own learning rate), the rank controller driven
  by :class:`lrlora.hf.LRLoRACallback`, export to a stock PEFT LoRA adapter.
- :class:`PeftMethod`: LoRA, AdaLoRA or DoRA from :mod:`lrlora.baselines` at the same budget,
  the Trainer's own optimizer, ``save_pretrained`` for the adapter.

Every method reports its ranks as rows with the keys of :func:`lrlora.rank_report`
(``name, kind, role, depth, r_max, rho, hard_rank, params``) and trajectory points with
``step``, ``rho`` and ``hard_rank`` per layer (LR-LoRA adds tau, lambda, allowance and sizes),
and saves/restores its trainable state for checkpoints (:mod:`lrlora.checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors.torch import save_file
from torch import nn

from .. import files
from ..controller import RankController
from ..export import export_peft, resume, save
from ..hf import LRLoRACallback, snapshot
from ..inject import inject, optimizer_groups
from ..report import depth_of, rank_report, role_of
from . import baselines

if TYPE_CHECKING:
    from .args import TrainArgs


class Method(Protocol):
    """What the training run needs from a method."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # None: the Trainer builds its AdamW
    callbacks: list  # transformers TrainerCallbacks the method needs

    def ranks_now(self) -> dict[str, Any]:
        """One trajectory point (without ``step``)."""

    def log_values(self) -> dict[str, float]:
        """Extra values for the training log (LR-LoRA: tau, lambda, adapter size)."""

    def rows(self) -> list[dict]:
        """Final per-layer rows, rank_report keys."""

    def param_counts(self) -> dict[str, int]:
        """Final ``adapter`` (low-rank factors) and ``extras`` (other adapter parameters)."""

    def export(self, path: os.PathLike, base_model: str) -> None:
        """Write the adapter as a stock PEFT adapter directory."""

    def save_state(self, path: Path) -> None:
        """Write the trainable state (and the method's own, e.g. the rank controller)."""

    def load_state(self, path: Path) -> None:
        """Restore what :meth:`save_state` wrote into the same (injected) model."""


class LRLoRAMethod:
    """LR-LoRA in budget mode: the budget is LoRA at ``budget_rank``, ceiling ``r_max``.
    The rank controller is built here, on the unwrapped model, so that a checkpoint can
    restore it before training starts."""

    def __init__(
        self,
        model: nn.Module,
        args: TrainArgs,
        targets: list[str],
        heads: list[str],
        total_steps: int,
    ):
        config = args.lrlora_config(targets, heads)
        torch.manual_seed(args.seed)
        self.model = inject(model, config)
        groups = optimizer_groups(self.model, args.lr, args.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=args.lr)
        self.controller = RankController(self.model, self.optimizer, total_steps=total_steps)
        self.callback = LRLoRACallback(controller=self.controller)
        self.callbacks = [self.callback]
        self.task_type = args.peft_task_type

    def ranks_now(self) -> dict[str, Any]:
        return snapshot(self.callback.controller)

    def log_values(self) -> dict[str, float]:
        controller = self.callback.controller
        return {
            "tau": round(controller.tau, 4),
            "lambda": round(controller.lam, 4),
            "adapter_params": controller.adapter_params(),
        }

    def rows(self) -> list[dict]:
        return rank_report(self.model)

    def param_counts(self) -> dict[str, int]:
        return {"adapter": sum(row["params"] for row in self.rows()), "extras": 0}

    def export(self, path: os.PathLike, base_model: str) -> None:
        export_peft(self.model, path, base_model_name_or_path=base_model, task_type=self.task_type)

    def save_state(self, path: Path) -> None:
        save(self.model, path, controller=self.controller)

    def load_state(self, path: Path) -> None:
        resume(path, self.model, controller=self.controller)


class PeftMethod:
    """A peft baseline (lora, adalora, dora) at ``budget_rank``."""

    def __init__(
        self,
        model: nn.Module,
        args: TrainArgs,
        targets: list[str],
        heads: list[str],
        total_steps: int,
    ):
        self.method = args.method
        self.model = baselines.make_peft_model(
            model,
            args.method,
            args.budget_rank,
            targets,
            modules_to_save=heads,
            total_steps=total_steps,
            lora_alpha=args.alpha,
            lora_dropout=args.dropout,
            task_type=args.peft_task_type,
            seed=args.seed,
            orth_reg_weight=args.adalora_orth_reg_weight,
        )
        self.optimizer = None
        self.callbacks = baselines.peft_callbacks(self.model, args.method)

    def ranks_now(self) -> dict[str, Any]:
        ranks = baselines.final_ranks(self.model, self.method)
        return {
            "adapter_params": self.param_counts()["adapter"],
            "rho": {name: float(rank) for name, rank in ranks.items()},
            "hard_rank": ranks,
        }

    def log_values(self) -> dict[str, float]:
        return {}

    def rows(self) -> list[dict]:
        from peft.tuners.lora import LoraLayer

        ranks = baselines.final_ranks(self.model, self.method)
        adapter = self.model.active_adapter
        rows = []
        for name, layer in self.model.get_base_model().named_modules():
            if isinstance(layer, LoraLayer):
                role, kind = role_of(name)
                rank, cost = ranks[name], layer.in_features + layer.out_features
                rows.append({"name": name, "kind": kind, "role": role, "depth": depth_of(name),
                             "r_max": layer.r[adapter], "rho": float(rank), "hard_rank": rank,
                             "params": rank * cost})  # fmt: skip
        return rows

    def param_counts(self) -> dict[str, int]:
        counts = baselines.adapter_param_counts(self.model, self.method)
        return {"adapter": counts["adapter"], "extras": counts["extras"]}

    def export(self, path: os.PathLike, base_model: str) -> None:
        self.model.save_pretrained(path)

    def save_state(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        params = self.model.named_parameters()
        trainable = {n: p.detach().contiguous().cpu() for n, p in params if p.requires_grad}
        save_file(trainable, str(path / "trainable.safetensors"))

    @torch.no_grad()
    def load_state(self, path: Path) -> None:
        """Restore the trainable tensors, once they are known to be exactly this model's
        (names, shapes, finite values); :class:`~lrlora.util.BadFileError` otherwise."""
        file = path / "trainable.safetensors"
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        tensors = files.read_tensors(file, "it was not written for this run")
        files.check_tensors(tensors, params, file, "it was not written for this run")
        for name, value in tensors.items():
            params[name].copy_(value)


def attach(
    model: nn.Module, args: TrainArgs, targets: list[str], heads: list[str], total_steps: int
) -> Method:
    """Put ``args.method``'s adapters on ``model`` (in place) and return the method."""
    if args.method == "lr-lora":
        return LRLoRAMethod(model, args, targets, heads, total_steps)
    return PeftMethod(model, args, targets, heads, total_steps)
