"""The rank controller: temperature and budget schedules, projection or penalty, hardening.

Use it from any training loop. Built with the optimizer, it hooks it: the rank update runs
just before each ``optimizer.step()`` and the controller's own ``step()`` just after it::

    controller = lrlora.RankController(model, optimizer, total_steps=1000)
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()         # also steps the controller
        optimizer.zero_grad()
    controller.harden()          # fixes the ranks; export after this

The controller counts the optimizer steps that ran: a loop that also calls
``controller.step()`` after ``optimizer.step()`` is not counted twice, and a step the
optimizer skipped (an AMP ``GradScaler``'s, on inf gradients) is not counted at all.
Built without an optimizer, it advances only by ``controller.step()``, one call per
optimizer step. Gradient accumulation is harmless: the rank cost is applied once per
optimizer step (the penalty in the pre-step hook, the budget by projection in ``step``).

Data-parallel training: under DDP rho's gradient is averaged with the others; FSDP2
cannot shard the 0-dim rho, so it is left out of ``fully_shard`` (``ignored_params``) and
the controller averages its gradient in an optimizer pre-step hook. Either way every
process steps its optimizer, and so its controller, alike and computes the same rho, tau
and allowance (DESIGN.md property 8), and ``step`` checks it: under ``torch.distributed``
it compares them across processes and raises :class:`ReplicaMismatchError` if any differ.
Re-balancing and hardening need the whole A and B, which FSDP2 shards: under FSDP2 they
refuse (harden a gathered, unsharded copy).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .budget import config_budget, most_valuable, trim_to_budget
from .config import LRLoRAConfig
from .inject import config_of, lora_layers
from .layer import LRLoRALinear
from .schedules import allowance, temperature
from .util import shape_mismatch

__all__ = [
    "ControllerNotSteppedError",
    "RankController",
    "ReplicaMismatchError",
    "allowance",
    "temperature",
    "trim_to_budget",
]

_CLAIMED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
"""Optimizers a live controller has hooked: a second controller on one is refused (its
hooks would apply the penalty and the rank update twice)."""

try:  # FSDP2 shards parameters as DTensors
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed support
    DTensor = None


def is_sharded(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ControllerNotSteppedError(RuntimeError):
    """Raised when ranks are hardened or exported but the controller never ran."""


class ReplicaMismatchError(RuntimeError):
    """Data-parallel processes hold different rho, tau or allowance (DESIGN property 8)."""


class RankController:
    """Drives tau, keeps rho in [0, R] and within the allowance, hardens at the end.

    Args:
        model: a model with LR-LoRA adapters (see :func:`lrlora.inject`).
        optimizer: its optimizer. Needed for the shared rank update (rho is updated in a
            pre-step hook), penalty mode (the penalty is added to rho's gradient there too)
            and re-balancing (Adam moments of the re-factored A and B are reset); the
            controller then steps itself after each of its steps (a post-step hook). Without
            it rho is moved only by whatever optimizer holds it, and the training loop calls
            :meth:`step` after every optimizer step.
        total_steps: the number of optimizer steps the run will take.
        probe: ``rank_update='prune'`` only: ``probe(i)`` returns the training loss (a
            differentiable scalar) on probe batch ``i`` for ``i`` < :attr:`PROBE_BATCHES`,
            the same batch whenever it is called with the same ``i``. The controller calls it
            at ``harden_at`` to measure what each component is worth (random draws such as
            dropout are repeated for the same ``i``).
    """

    SEARCH_POINTS = 32
    SEARCH_ROUNDS = 8
    """The budget projection's shift is found by a grid search that keeps the root bracketed
    and narrows the bracket 31-fold per round: 8 rounds leave 31^-8 (1e-12) of it, as fine
    as 40 halvings, in 8 vectorised steps that never read the device."""

    PROBE_BATCHES = 8
    """Batches the pruning measures the components' values on."""
    PROBE_VECTORS = 2
    """Random directions per probe batch for the second derivative (Hutchinson)."""
    PROBE_STEP = 0.05
    """The gates' change in the central difference of the gradient (second derivative)."""
    FIRST_CUT_AT = 0.625
    """With ``prune_stages=2``: the first cut comes at this fraction of ``harden_at``."""
    FIRST_CUT_KEEP = 2.0
    """With ``prune_stages=2``: the first cut keeps this many times the budget."""
    OPEN_TAU = 1e-3
    """The gate temperature of ``rank_update='prune'`` before pruning: every gate below rho
    is exactly 1 (sigmoid(500)), so the layers are LoRA at rank rho."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        total_steps: int,
        probe: Callable[[int], torch.Tensor] | None = None,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.config: LRLoRAConfig = config_of(model)
        self.names, self.layers = zip(*lora_layers(model), strict=True)
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.probe = probe
        self.prunes = self.config.rank_update == "prune"
        if self.prunes:  # rho stays where inject put it until the controller prunes
            for layer in self.layers:
                layer.rho.requires_grad_(False)
        self.step_count = 0
        costs = torch.tensor([layer.cost_per_rank for layer in self.layers], dtype=torch.float64)
        self.costs = costs
        self.weights = costs / costs.mean()
        if self.config.projection == "even":  # the same shift for every rho
            self.weights = torch.ones_like(self.weights)
        self._on_device: dict[str, torch.Tensor] = {}
        self._last_shift = torch.zeros((), dtype=torch.float64)
        self.max_params = float(costs.sum()) * self.config.r_max
        self._set_tau(self.tau)
        self.initial_params = self._soft_cost(self._rhos(), self.tau)
        self._rank_m: torch.Tensor | None = None  # shared rank update: first moments (L,)
        self._rank_v: torch.Tensor | None = None  # and the one second moment all layers share
        self._rank_t = 0
        self._optimizer_stepped = False  # set by the post-step hook, cleared by step()
        self._handles = self._hook(optimizer) if optimizer is not None else []
        if self.config.rank_signal == "sensitivity":  # the layers start measuring it
            for layer in self.layers:
                layer.sensitivity = torch.zeros(layer.r_max, device=layer.lora_A.device)

    # -- hooks ------------------------------------------------------------------------------
    def _hook(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        """Register the pre-step work and the post-step :meth:`step` on ``optimizer`` (at
        most one controller per optimizer); returns the handles :meth:`close` removes."""
        if optimizer in _CLAIMED:
            raise ValueError(
                "this optimizer already drives a RankController: a second one would apply the "
                "rank update and penalty twice. close() the first (or build it in a `with` "
                "block), or reuse it."
            )
        work = [self.average_rank_gradients]
        if self.config.rank_mode == "penalty":
            work.append(self.apply_penalty)
        if self.config.rank_update == "shared":
            work.append(self.update_ranks)
        handles = [optimizer.register_step_pre_hook(lambda *_, f=f: f()) for f in work]
        handles.append(optimizer.register_step_post_hook(lambda *_: self._after_optimizer_step()))
        _CLAIMED.add(optimizer)
        return handles

    def _after_optimizer_step(self) -> None:
        """The post-step hook: the optimizer has stepped, so the controller steps."""
        self._optimizer_stepped = True
        self.step()

    def close(self) -> None:
        """Remove this controller's optimizer hooks and release the optimizer for another
        controller; the ranks and the controller's state stay as they are, and from then on
        it advances only by :meth:`step`."""
        for handle in self._handles:
            handle.remove()
        for layer in self.layers:
            layer.sensitivity = None
        if self._handles:
            _CLAIMED.discard(self.optimizer)
        self._handles = []

    def __enter__(self) -> RankController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schedules ------------------------------------------------------------------------
    @property
    def target_params(self) -> float:
        """The budget (adapter parameters), from the config and the layers alone: what the
        allowance decays to and what hardening never exceeds, whatever state was loaded."""
        return config_budget(self.config, [layer.cost_per_rank for layer in self.layers])

    @property
    def tau(self) -> float:
        """The gate temperature: from tau_start to tau_end over the steps before hardening."""
        c = self.config
        if self.prunes:
            return self.OPEN_TAU
        return temperature(self.step_count, self.soft_steps, c.tau_start, c.tau_end, c.tau_shape)

    @property
    def soft_steps(self) -> int:
        """The steps before the controller hardens the ranks (all of them if harden_at=1)."""
        return max(1, round(self.config.harden_at * self.total_steps))

    @property
    def first_cut_step(self) -> int | None:
        """``prune_stages=2``: the step after which the first cut keeps twice the budget
        (None if there is none, or it would not come before the final one)."""
        if not self.prunes or self.config.prune_stages < 2:
            return None
        step = max(1, round(self.FIRST_CUT_AT * self.config.harden_at * self.total_steps))
        return step if step < self.soft_steps else None

    @property
    def allowance(self) -> float:
        """Allowed soft adapter size (parameters) now; the budget itself after the decay."""
        if self.config.rank_mode == "penalty":
            return self.max_params
        c = self.config
        return allowance(
            self.step_count,
            self.total_steps,
            self.initial_params,
            self.target_params,
            c.warmup_frac,
            c.decay_end_frac,
        )

    @property
    def lam(self) -> float:
        """Penalty mode: lambda. Budget mode: the last projection's shift of rho (the
        multiplier the budget currently exerts, in ranks per unit cost weight)."""
        return self.config.penalty if self.config.rank_mode == "penalty" else self.last_shift

    @property
    def last_shift(self) -> float:
        """The last budget projection's shift delta (0 when the budget did not bind)."""
        return float(self._last_shift)

    # -- per-step work --------------------------------------------------------------------
    def _rhos(self) -> torch.Tensor:
        """Every layer's rho, float64, on the host (reads the device: not for every step)."""
        return self._device_rhos().cpu()

    def _device_rhos(self) -> torch.Tensor:
        """Every layer's rho, float64, on the first layer's device; no host synchronisation."""
        device = self.layers[0].rho.device
        return torch.stack([layer.rho.detach().to(device) for layer in self.layers]).double()

    def _constants(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Cost per rank, cost weight, gate index (+ 0.5) and the projection's search grid,
        float64, kept on ``device`` (a copy to a GPU waits for it, so it is made once)."""
        if not self._on_device or self._on_device["costs"].device != device:
            index = torch.arange(self.config.r_max, dtype=torch.float64) + 0.5
            grid = torch.linspace(0.0, 1.0, self.SEARCH_POINTS, dtype=torch.float64)
            self._on_device = {
                "costs": self.costs.to(device),
                "weights": self.weights.to(device),
                "index": index.to(device),
                "grid": grid.to(device),
            }
        return self._on_device

    def _refuse_sharded(self, what: str) -> None:
        if any(is_sharded(layer.lora_A) for layer in self.layers):
            raise NotImplementedError(
                f"{what} needs the full adapter factors, which FSDP2 shards: under FSDP2 train "
                "with rebalance_every=0 and harden_at=1.0, then gather the model's full state "
                "dict and harden an unsharded copy (docs/SCALING.md)."
            )

    def _soft_ranks(self, rhos: torch.Tensor, tau: float) -> torch.Tensor:
        """Soft rank of every layer (..., L) for rhos (..., L)."""
        index = self._constants(rhos.device)["index"]
        return torch.sigmoid((rhos[..., None] - index) / tau).sum(dim=-1)

    def _soft_costs(self, rhos: torch.Tensor, tau: float) -> torch.Tensor:
        """Soft adapter size (parameters) for rhos (..., L): a tensor (...) on rhos' device."""
        costs = self._constants(rhos.device)["costs"]
        return (self._soft_ranks(rhos, tau) * costs).sum(dim=-1)

    def _soft_cost(self, rhos: torch.Tensor, tau: float) -> float:
        return float(self._soft_costs(rhos, tau))

    def _set_tau(self, tau: float) -> None:
        self._fill([layer.tau for layer in self.layers], tau)

    @staticmethod
    def _fill(buffers: list[torch.Tensor], value: float) -> None:
        """Set every (scalar) buffer to ``value``: one device fill and one multi-tensor copy
        where they share a device, instead of a kernel per layer; never waits for the device."""
        first = buffers[0]
        if all(b.device == first.device and b.dtype == first.dtype for b in buffers):
            source = torch.full((), value, dtype=first.dtype, device=first.device)
            torch._foreach_copy_(buffers, [source] * len(buffers))
        else:
            for buffer in buffers:
                buffer.fill_(value)

    @torch.no_grad()
    def apply_penalty(self) -> None:
        """Penalty mode: add lambda * dC/drho_l / C_max to each rho's gradient."""
        if self.hardened:
            return
        for layer, cost in zip(self.layers, self.costs, strict=True):
            rho = layer.rho.detach().requires_grad_(True)
            with torch.enable_grad():
                g = torch.sigmoid((rho - layer.component_index) / layer.tau).sum()
                (drank,) = torch.autograd.grad(g, rho)
            push = self.config.penalty * float(cost) * drank / self.max_params
            layer.rho.grad = push if layer.rho.grad is None else layer.rho.grad + push

    RANK_BETAS = (0.9, 0.999)

    def _rank_lr(self) -> float:
        """rho's learning rate now: that of the optimizer group holding rho where it is the
        rank group (so a scheduler shapes it like every other rate), else ``rank_lr``."""
        rho = self.layers[0].rho
        for group in self.optimizer.param_groups:
            if group.get("lrlora_rank") and any(p is rho for p in group["params"]):
                return float(group["lr"])
        return self.config.rank_lr

    @torch.no_grad()
    def update_ranks(self) -> None:
        """The 'shared' rank update (run just before the optimizer's step): Adam on the
        vector of rhos with one second moment, the mean over layers of the squared gradient.
        Adam's per-parameter normalisation moves a rho by about its rate whenever its
        gradient keeps its sign, however large the gradient; sharing the normaliser keeps
        the layers' gradients in proportion, so the projection then moves rank to where the
        loss falls fastest per parameter. The gradients are consumed (set to None), so the
        optimizer leaves rho alone."""
        if self.hardened:  # rho is fixed; the gradient it no longer has is not rank's
            return
        device = self.layers[0].rho.device
        if self.config.rank_signal != "gradient":
            grads = -self.boundary_values().to(device)
        else:
            grads = torch.stack(
                [torch.zeros((), device=device) if layer.rho.grad is None
                 else layer.rho.grad.detach().to(device) for layer in self.layers]
            ).double()  # fmt: skip
        if self.config.projection == "even":  # per unit of cost (kept on the device: no copy)
            costs = self._constants(device)["costs"]
            grads = grads / (costs / costs.mean())
        if self._rank_m is None or self._rank_m.device != device:
            self._rank_m = torch.zeros_like(grads)
            self._rank_v = torch.zeros((), dtype=torch.float64, device=device)
        beta1, beta2 = self.RANK_BETAS
        self._rank_t += 1
        self._rank_m.mul_(beta1).add_(grads, alpha=1 - beta1)
        self._rank_v.mul_(beta2).add_(grads.square().mean(), alpha=1 - beta2)
        step_size = self._rank_lr() / (1 - beta1**self._rank_t)
        scale = (self._rank_v / (1 - beta2**self._rank_t)).sqrt().add_(1e-12)
        update = (self._rank_m / scale) * step_size
        self._write_rhos(self._device_rhos() - update)
        for layer in self.layers:
            layer.rho.grad = None

    BOUNDARY_TAU = 0.5
    """Width of the window over the spectrum that :meth:`boundary_values` reads around rho."""

    @torch.no_grad()
    def boundary_values(self) -> torch.Tensor:
        """What closing each layer's next component would cost (L,), read from a per-component
        cost through the gate's slope d r_eff / d rho at temperature ``BOUNDARY_TAU``.
        'sensitivity': the components' empirical-Fisher cost accumulated by the layers since
        the last optimizer step (then cleared). 'spectrum': the update's squared singular
        values; truncating at rank k loses the sum of those beyond k (Eckart-Young)."""
        if self.config.rank_signal == "sensitivity":
            stacked = torch.stack([layer.sensitivity for layer in self.layers]).double()  # (L, R)
            if _distributed():  # every process moves rho by the same, summed, sensitivity
                dist.all_reduce(stacked)
            costs = list(stacked.unbind())
            for layer in self.layers:
                layer.sensitivity.zero_()
        else:
            costs = [layer.spectrum().double().square() for layer in self.layers]
        values = []
        for layer, spectrum in zip(self.layers, costs, strict=True):
            index = self._constants(spectrum.device)["index"]
            gate = torch.sigmoid((layer.rho.detach().double().to(spectrum.device) - index)
                                 / self.BOUNDARY_TAU)  # fmt: skip
            window = gate * (1 - gate)
            values.append((spectrum * window).sum() / window.sum().clamp_min(1e-12))
        return torch.stack(values)

    def _write_rhos(self, rhos: torch.Tensor) -> None:
        """Copy rhos (L,) into the layers' rho: one multi-tensor copy where they share a
        device."""
        params = [layer.rho for layer in self.layers]
        if all(p.device == rhos.device for p in params):
            torch._foreach_copy_(params, list(rhos.to(params[0].dtype).unbind()))
        else:  # layers spread over devices
            for param, rho in zip(params, rhos, strict=True):
                param.copy_(rho)

    @torch.no_grad()
    def average_rank_gradients(self) -> None:
        """Under FSDP2 (A and B sharded, rho left out): average rho's gradient across
        processes, as FSDP2 does for the parameters it manages. DDP needs nothing here."""
        if not _distributed() or not any(is_sharded(layer.lora_A) for layer in self.layers):
            return
        grads = torch.stack(
            [torch.zeros_like(layer.rho) if layer.rho.grad is None else layer.rho.grad
             for layer in self.layers]
        )  # fmt: skip
        dist.all_reduce(grads)  # a sum: gloo has no average
        for layer, grad in zip(self.layers, grads / dist.get_world_size(), strict=True):
            layer.rho.grad = grad.clone()

    @property
    def hardened(self) -> bool:
        """Whether the ranks are fixed (by :meth:`harden`, here or in a resumed run)."""
        return all(layer.hardened for layer in self.layers)

    @torch.no_grad()
    def step(self) -> None:
        """Advance one optimizer step: anneal tau, project rho onto the allowance, re-balance
        when due. At ``harden_at`` of training the ranks are hardened; from then on only the
        step count moves.

        While the controller hooks an optimizer, it advances only if that optimizer has
        stepped since it last advanced. Its post-step hook calls this after every
        ``optimizer.step()`` that ran, so a call from the training loop (after
        ``optimizer.step()``, as the Trainer callback makes) does nothing, and a step the
        optimizer skipped is not counted. Without an optimizer, or after :meth:`close`,
        every call advances."""
        if self._handles:  # hooked: only an optimizer step advances the controller
            if not self._optimizer_stepped:
                return
            self._optimizer_stepped = False
        self.step_count += 1
        if self.hardened:
            self._fill([layer.steps for layer in self.layers], self.step_count)
            return
        if self.config.harden_at < 1.0 and self.step_count >= self.soft_steps:
            self._fill([layer.steps for layer in self.layers], self.step_count)
            self.harden()
            return
        if self.prunes:  # LoRA at the starting rank until harden_at: nothing moves
            if self.step_count == 1:  # say it now, not at harden_at
                self._require_probe()
            if self.step_count == self.first_cut_step:  # once, and never again on resume
                self._first_cut()
            self._fill([layer.steps for layer in self.layers], self.step_count)
            return
        # Everything here stays on the rho's device and never waits for it: on a GPU one
        # read of a device value per layer would stall every training step.
        rhos = self._device_rhos().clamp(0.0, self.config.r_max)
        tau = self.tau
        if self.config.rank_mode == "budget":
            rhos = self._project(rhos, tau, self.allowance)
        self._write_rhos(rhos)
        self._fill([layer.steps for layer in self.layers], self.step_count)
        self._set_tau(tau)
        self._check_replicas(rhos)
        if self._rebalance_due():
            self.rebalance()

    def _project(self, rhos: torch.Tensor, tau: float, budget: float) -> torch.Tensor:
        """Shift every rho by -delta * w_l so that the soft cost equals the allowance
        (Euclidean projection, to first order); the cost falls as delta grows, and the
        smallest delta found with cost <= allowance is used. With ``fill_budget`` delta may
        be negative: rank that one layer gives up goes to the others; without it the
        allowance is only a cap (delta >= 0)."""
        r_max, device = self.config.r_max, rhos.device
        on_device = self._constants(device)
        weights, grid = on_device["weights"], on_device["grid"]
        bound = r_max / float(self.weights.min())
        # Device fills from host numbers (a host-to-device copy would wait for the device).
        lo = torch.full((), -bound if self.config.fill_budget else 0.0, dtype=torch.float64,
                        device=device)  # fmt: skip
        hi = torch.full((), bound, dtype=torch.float64, device=device)
        last = torch.full((1,), self.SEARCH_POINTS - 1, device=device)
        for _ in range(self.SEARCH_ROUNDS):
            deltas = lo + (hi - lo) * grid  # (K,)
            shifted = (rhos - deltas[:, None] * weights).clamp(0.0, r_max)  # (K, L)
            over = (self._soft_costs(shifted, tau) > budget).sum().reshape(1)
            # The first delta within the allowance and the one before it bracket the root.
            hi = deltas.index_select(0, torch.minimum(over, last)).squeeze(0)
            lo = deltas.index_select(0, (over - 1).clamp(min=0)).squeeze(0)
        self._last_shift = hi
        return (rhos - hi * weights).clamp(0.0, r_max)

    def _rebalance_due(self) -> bool:
        every = self.config.rebalance_every
        end = self.config.decay_end_frac * self.total_steps
        return every > 0 and self.step_count % every == 0 and self.step_count <= end

    def _check_replicas(self, rhos: torch.Tensor) -> None:
        """Under torch.distributed: raise unless every process holds the same rho, tau and
        allowance (one all-reduce of max(v) and max(-v) = -min(v))."""
        if not _distributed():
            return
        schedule = torch.tensor([self.tau, self.allowance], dtype=torch.float64)
        values = torch.cat([rhos.cpu(), schedule])
        device = self.layers[0].lora_A.device  # NCCL reduces device tensors only
        extremes = torch.stack([values, -values]).to(device)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        spread = (extremes[0] + extremes[1]).cpu()  # max - min across processes
        if bool((spread > 0).any()):
            names = [*self.names, "tau", "allowance"]
            differ = [names[i] for i in torch.nonzero(spread).flatten().tolist()]
            raise ReplicaMismatchError(
                f"data-parallel processes disagree at controller step {self.step_count} on "
                f"{differ[:5]} (spread up to {float(spread.max()):.3g}): rho must get the same "
                "averaged gradient on every process. Wrap the model with DDP after "
                "lrlora.inject (FSDP2: leave rho out with ignored_params and give the controller "
                "the optimizer) and step the controller on every process."
            )

    @torch.no_grad()
    def rebalance(self) -> None:
        """Re-order every layer's components by singular value; reset their Adam moments
        (or, with ``rebalance_moments='rescale'``, zero the first and even out the second).
        Fresh components come from a generator seeded with the step, so every data-parallel
        process, and a resumed run, draws the same ones."""
        self._refuse_sharded("re-balancing")
        generator = torch.Generator().manual_seed(self.step_count)
        for layer in self.layers:
            layer.rebalance(generator, exact=self.config.rebalance_exact)
            if self.optimizer is None:
                continue
            # The components' axis: B's columns, A's rows.
            for param, axis in ((layer.lora_A, 0), (layer.lora_B, 1)):
                state = self.optimizer.state.get(param)
                if self.config.rebalance_moments == "reset" or not state:
                    self.optimizer.state.pop(param, None)
                    continue
                for key, moment in state.items():
                    if key == "exp_avg":
                        moment.zero_()
                    elif key in ("exp_avg_sq", "max_exp_avg_sq"):
                        moment.copy_(moment.mean(dim=axis, keepdim=True).expand_as(moment))

    # -- reading the ranks ------------------------------------------------------------------
    def soft_ranks(self) -> dict[str, float]:
        return {
            n: float(layer.soft_rank().detach())
            for n, layer in zip(self.names, self.layers, strict=True)
        }

    def hard_ranks(self) -> dict[str, int]:
        pairs = zip(self.names, self.layers, strict=True)
        return {n: layer.current_hard_rank() for n, layer in pairs}

    def effective_rank_total(self) -> float:
        return sum(self.soft_ranks().values())

    def adapter_params(self) -> int:
        """Parameters the adapter would export with now (hard ranks x cost per rank)."""
        return sum(layer.current_hard_rank() * layer.cost_per_rank for layer in self.layers)

    def summary(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "tau": self.tau,
            "lambda": self.lam,
            "allowance": self.allowance,
            "soft_params": self._soft_cost(self._rhos(), self.tau),
            "adapter_params": self.adapter_params(),
            "budget_params": self.target_params if self.config.rank_mode == "budget" else None,
        }

    # -- the end ----------------------------------------------------------------------------
    HARDEN_CANDIDATE = 0.01
    """A component whose gate is above this (and whose output is not 0) is a candidate to
    keep at hardening."""

    def _candidates(self, layer: LRLoRALinear) -> int:
        """How many of the layer's leading components are candidates to keep."""
        strength = layer.component_strength().detach()
        rank = int((layer.gate() > self.HARDEN_CANDIDATE).sum())
        while rank > 0 and float(strength[rank - 1]) == 0.0:
            rank -= 1
        return rank

    @torch.no_grad()
    def harden(self) -> dict[str, int]:
        """Fix every layer's rank to its open gates, trimmed to the budget (under
        ``rank_update='prune'``: to the most valuable components, see :meth:`_prune`);
        returns the ranks."""
        self._refuse_sharded("hardening")
        if self.step_count == 0:
            raise ControllerNotSteppedError(
                "the RankController was never stepped, so no rank was learned: train with the "
                "optimizer it was built with (it steps after every optimizer.step()), or, built "
                "without one, call controller.step() after every optimizer step (with the "
                "Trainer, add lrlora.hf.LRLoRACallback) before hardening or exporting."
            )
        if self.prunes and not self.hardened:
            ranks = self._prune()  # within the budget by construction
        elif self.config.rank_mode == "budget" and not self.hardened:
            # Every component with some output is a candidate, and the budget drops the ones
            # with the least output per parameter: rounding each layer alone (gate > 0.5)
            # threw away half-open components that held half the fit, while closing others
            # that held less.
            ranks = [self._candidates(layer) for layer in self.layers]
        else:
            ranks = [layer.current_hard_rank() for layer in self.layers]
        if self.config.rank_mode == "budget":  # whatever state was loaded
            ranks = trim_to_budget(list(self.layers), ranks, self.target_params)
        for layer, rank in zip(self.layers, ranks, strict=True):
            layer.harden(rank)
            self._stop_closed_components(layer, rank)
        return dict(zip(self.names, ranks, strict=True))

    def _require_probe(self) -> None:
        """Refuse to prune (or to start a run that will) without a probe."""
        if self.probe is None:
            raise ValueError(
                "rank_update='prune' measures the components on probe batches, and this "
                "RankController has no probe: build it with probe=fn, fn(i) returning the "
                f"training loss on a fixed batch i (i < {self.PROBE_BATCHES}), or train with "
                "lrlora.hf.LRLoRACallback, which builds one from the training data (or choose "
                "rank_update='shared' in the config, which needs no probe)."
            )

    def _prune(self, budget: float | None = None) -> list[int]:
        """``rank_update='prune'``: re-factor every layer by SVD (exact: its gates are 1 or
        0), measure each component's value (:meth:`component_values`), keep the most
        valuable per parameter across layers up to ``budget`` (default: the budget), and
        move the kept ones to the front. The optimizer's moments of A and B are dropped:
        they belong to the old factors."""
        self._refuse_sharded("pruning")
        self._require_probe()
        generator = torch.Generator().manual_seed(self.step_count)
        for layer in self.layers:
            layer.rebalance(generator)
        values = self.component_values().tolist()
        costs = [layer.cost_per_rank for layer in self.layers]
        kept = most_valuable(values, costs, self.target_params if budget is None else budget)
        for layer, indices in zip(self.layers, kept, strict=True):
            layer.keep_components(indices)
            if self.optimizer is not None:
                self.optimizer.state.pop(layer.lora_A, None)
                self.optimizer.state.pop(layer.lora_B, None)
        return [len(indices) for indices in kept]

    @torch.no_grad()
    def _first_cut(self) -> None:
        """``prune_stages=2``: keep the most valuable components up to twice the budget and
        close the rest (rho = the kept count; at the open temperature the gates are 1 below
        it and 0 above), so that the kept ones train longer before the final cut."""
        ranks = self._prune(self.FIRST_CUT_KEEP * self.target_params)
        for layer, rank in zip(self.layers, ranks, strict=True):
            layer.rho.fill_(float(rank))

    def component_values(self) -> torch.Tensor:
        """What each component is worth to the loss (L, R), from a quadratic model of the
        loss in a factor ``m_i`` on its gate (1 now): with slope ``a`` and curvature ``h``
        summed over the probe batches, the loss rises by ``h / 2 - a`` without the component
        and falls by ``a^2 / 2h`` at its best scale, so its value is ``(a - h)^2 / 2h``, what
        it gives at its best scale (``h / 2 - a`` where ``h <= 0``). Counting a component at
        its best scale does not hold back one that has found its direction but not yet its
        size: the layers far from the loss learn later, and pruning on the loss alone
        took their rank away. ``a`` is the gradient, ``h`` a Hutchinson estimate from central
        differences of the gradient along random +-1 directions (no second backward)."""
        layers = self.layers
        device = layers[0].lora_A.device
        factors = [torch.ones(layer.r_max, device=device, requires_grad=True) for layer in layers]
        slope = torch.zeros(len(layers), self.config.r_max, dtype=torch.float64)
        curve = torch.zeros_like(slope)
        directions = torch.Generator().manual_seed(self.step_count)
        step = self.PROBE_STEP
        try:
            for layer, factor in zip(layers, factors, strict=True):
                layer.probe_gate = factor
            for batch in range(self.PROBE_BATCHES):
                slope += self._probe_gradient(batch, factors)
                for _ in range(self.PROBE_VECTORS):
                    v = torch.randint(0, 2, slope.shape, generator=directions).double() * 2 - 1
                    up = self._probe_gradient(batch, factors, step * v)
                    down = self._probe_gradient(batch, factors, -step * v)
                    curve += v * (up - down) / (2 * step * self.PROBE_VECTORS)
        finally:
            for layer in layers:
                layer.probe_gate = None
        if _distributed():  # every process keeps the same components
            both = torch.stack([slope, curve]).to(device)
            dist.all_reduce(both)
            slope, curve = both.cpu().unbind(0)
        best = (slope - curve).square() / (2 * curve.clamp_min(1e-30))
        return torch.where(curve > 0, best, curve / 2 - slope)

    def _probe_gradient(
        self, batch: int, factors: list[torch.Tensor], shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """d loss / d m on probe batch ``batch`` (L, R) with the gate factors at 1 + shift;
        the random draws (dropout) are the same for every call with the same batch."""
        with torch.no_grad():
            for k, factor in enumerate(factors):
                factor.fill_(1.0)
                if shift is not None:
                    factor += shift[k].to(factor)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.enable_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(1_000_003 + batch)
            loss = self.probe(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the probe's loss on batch {batch} is {float(loss)}: pruning cannot "
                    "measure the components on it; lower the learning rate or check the data."
                )
            grads = torch.autograd.grad(loss, factors, allow_unused=True)
        rows = [torch.zeros(self.config.r_max) if g is None else g.detach().cpu() for g in grads]
        return torch.stack(rows).double()

    def _stop_closed_components(self, layer: LRLoRALinear, rank: int) -> None:
        """Clear the optimizer's moments of the closed components (B's columns and A's rows
        from ``rank`` on), so that training after hardening leaves them where they are."""
        if self.optimizer is None:
            return
        for param, index in ((layer.lora_A, (slice(rank, None),)),
                             (layer.lora_B, (slice(None), slice(rank, None)))):  # fmt: skip
            for moment in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(moment) and moment.shape == param.shape:
                    moment[index] = 0

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "initial_params": self.initial_params,
            "target_params": self.target_params,
            "last_shift": self.last_shift,
            "rank_moments": None if self._rank_m is None else {
                "t": self._rank_t,
                "m": self._rank_m.tolist(),
                "v": float(self._rank_v),
            },
        }  # fmt: skip

    STATE_SHAPE = {"step_count": int, "total_steps": int, "initial_params": float,
                   "target_params": float, "last_shift": float,
                   "rank_moments": (None, {"t": int, "m": [float], "v": float})}  # fmt: skip
    """What :meth:`state_dict` holds (and :meth:`load_state_dict` accepts)."""

    def check_state(self, state: Any) -> None:
        """Raise ``ValueError`` unless ``state`` (e.g. read back from controller.json) is one
        this controller can take: its shape, ranges, and agreement with this model and
        config (the same planned steps, budget and number of layers)."""
        found = shape_mismatch(state, self.STATE_SHAPE)
        if found:
            raise ValueError(found)
        if state["total_steps"] != self.total_steps:
            raise ValueError(
                f"this controller plans {self.total_steps} steps but the saved one planned "
                f"{state['total_steps']}; resume with the same total_steps."
            )
        if not math.isclose(state["target_params"], self.target_params, rel_tol=1e-9):
            raise ValueError(
                f"target_params is {state['target_params']}, but the budget of this model's "
                f"config is {self.target_params}"
            )
        ranges = {
            "step_count": (state["step_count"], 0, self.total_steps),
            "initial_params": (state["initial_params"], 0.0, self.max_params * (1 + 1e-9)),
        }
        moments = state["rank_moments"]
        if moments is not None:
            if len(moments["m"]) != len(self.layers):
                raise ValueError(
                    f"rank_moments hold {len(moments['m'])} layers, this model has "
                    f"{len(self.layers)}"
                )
            ranges |= {"rank_moments.t": (moments["t"], 0, math.inf),
                       "rank_moments.v": (moments["v"], 0.0, math.inf)}  # fmt: skip
        for name, (value, low, high) in ranges.items():
            if not low <= value <= high:
                raise ValueError(f"{name} is {value}, outside [{low:g}, {high:g}]")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, checked first (:meth:`check_state`). The budget is
        not taken from it: it always comes from the config (:attr:`target_params`)."""
        self.check_state(state)
        self.step_count = int(state["step_count"])
        self.initial_params = float(state["initial_params"])
        self._last_shift = torch.tensor(float(state["last_shift"]), dtype=torch.float64)
        moments = state.get("rank_moments")
        if moments is None:
            self._rank_m, self._rank_v, self._rank_t = None, None, 0
        else:
            device = self.layers[0].rho.device
            self._rank_t = int(moments["t"])
            self._rank_m = torch.tensor(moments["m"], dtype=torch.float64, device=device)
            self._rank_v = torch.tensor(float(moments["v"]), dtype=torch.float64, device=device)
        self._set_tau(self.tau)
        for layer in self.layers:
            layer.steps.fill_(self.step_count)
