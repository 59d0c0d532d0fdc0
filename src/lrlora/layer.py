"""The LR-LoRA adapter layer: a LoRA update whose rank is a learnable real number.

For a frozen linear map ``W0`` (d_out x d_in) the layer computes

    y = W0 x + s * B (g * (A dropout(x))),    g_i = sigmoid((rho - i - 0.5) / tau)

with ``A`` (R x d_in), ``B`` (d_out x R), a rank ``rho`` in [0, R] and a temperature
``tau`` set by the :class:`~lrlora.controller.RankController`. The gate ``g`` is
non-increasing in ``i``, so components close from the top index down; ``sum(g)`` is the
differentiable rank and ``#{i: g_i > 0.5}`` the hard rank. After :meth:`harden` the gate
is the step function ``1[i < r]``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .util import excerpt

MIN_EXACT_GATE = 0.1
"""Smallest gate an exact re-balancing divides by (a smaller one would blow up B)."""


def conv1d_class() -> type | None:
    """transformers' GPT-2 ``Conv1D`` if transformers is already imported (never imports it)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def _check_arguments(r_max: Any, init_rank: Any, alpha: Any, ref_rank: Any, dropout: Any) -> None:
    """Refuse what would break the forward later, or silently: a rank that is not a number
    (``ref_rank="four"``), a NaN, a rank outside [0, R]."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(r_max, int) or isinstance(r_max, bool) or r_max <= 0:
        raise ValueError(f"r_max must be a positive integer, got {excerpt(r_max)}.")
    checks = {
        "init_rank": (init_rank, lambda v: 0 <= v <= r_max, f"in [0, r_max={r_max}]"),
        "alpha": (alpha, math.isfinite, "finite"),
        "ref_rank": (ref_rank, lambda v: 0 < v < math.inf, "positive and finite"),
        "dropout": (dropout, lambda v: 0 <= v < 1, "in [0, 1)"),
    }
    for name, (value, ok, what) in checks.items():
        if not number(value) or not ok(value):
            raise ValueError(f"{name} must be a number {what}, got {excerpt(value)}.")


def is_adaptable(module: nn.Module) -> bool:
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


class LRLoRALinear(nn.Module):
    """Wraps ``nn.Linear`` or transformers' ``Conv1D`` (weight stored as d_in x d_out).

    Args:
        base: the frozen layer.
        r_max: rank ceiling R.
        init_rank: starting value of rho.
        alpha: LoRA alpha.
        ref_rank: the rank in the denominator of the scaling (alpha / ref_rank), unless
            ``sqrt_scaling`` is set, in which case s = alpha / sqrt(r_eff).
        hard_ref_rank: the same once the rank is hardened (default: ``ref_rank``); hardening
            rescales B so that the output is kept.
        dropout: dropout probability on the adapter input.
    """

    config: Any = None
    """The :class:`~lrlora.LRLoRAConfig` the layer was injected with (set by
    :func:`lrlora.inject`; the controller, save and export read it here, not on the model)."""
    reference_rank: float | None = None
    """The LoRA rank whose size equals the budget (set by :func:`lrlora.inject`)."""

    def __init__(
        self,
        base: nn.Module,
        r_max: int,
        init_rank: float,
        alpha: float,
        ref_rank: float,
        dropout: float = 0.0,
        sqrt_scaling: bool = False,
        hard_ref_rank: float | None = None,
    ) -> None:
        super().__init__()
        if not is_adaptable(base):
            raise TypeError(f"LR-LoRA adapts nn.Linear or Conv1D, not {type(base).__name__}")
        hard_ref_rank = ref_rank if hard_ref_rank is None else hard_ref_rank
        _check_arguments(r_max, init_rank, alpha, ref_rank, dropout)
        _check_arguments(r_max, init_rank, alpha, hard_ref_rank, dropout)
        self.base = base
        self.fan_in_fan_out = not isinstance(base, nn.Linear)  # Conv1D: weight is (d_in, d_out)
        d_in, d_out = base.weight.shape if self.fan_in_fan_out else base.weight.shape[::-1]
        self.d_in, self.d_out, self.r_max = d_in, d_out, r_max
        self.alpha, self.ref_rank, self.sqrt_scaling = alpha, ref_rank, sqrt_scaling
        self.hard_ref_rank = hard_ref_rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(r_max, d_in, dtype=weight.dtype, device=weight.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(d_out, r_max, dtype=weight.dtype, device=weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as LoRA: B = 0 so y = W0 x at init
        self.rho = nn.Parameter(torch.tensor(float(init_rank), device=weight.device))
        # Set by the controller; buffers so that they travel with state_dict and .to(device).
        self.register_buffer("tau", torch.tensor(1.0, device=weight.device))
        self.register_buffer(
            "steps", torch.tensor(0, device=weight.device)
        )  # controller steps seen
        self.register_buffer("hard_rank", torch.tensor(-1, device=weight.device))  # -1: soft
        self.register_buffer("component_index", torch.arange(r_max, device=weight.device) + 0.5)
        # Host copy of ``hard_rank``: the forward asks "hardened?" on every call, and reading a
        # CUDA buffer there would stall the host on the device every layer, every step.
        self._hard_rank = -1
        self.merged = False
        self.disabled = False
        # Set by the controller when rho follows the components' sensitivity (float32, (R,)).
        self.sensitivity: torch.Tensor | None = None
        # Set by the controller while it measures what each component is worth (R,): a
        # factor on every gate, so the loss's derivatives in it are the components' values.
        self.probe_gate: torch.Tensor | None = None

    @property
    def hardened(self) -> bool:
        return self._hard_rank >= 0

    def sync_hard_rank(self) -> None:
        """Re-read the ``hard_rank`` buffer after writing it directly (loading does this)."""
        self._hard_rank = int(self.hard_rank)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.sync_hard_rank()

    @property
    def cost_per_rank(self) -> int:
        """Adapter parameters one rank component costs: a row of A and a column of B."""
        return self.d_in + self.d_out

    def gate(self) -> torch.Tensor:
        """g (R,): sigmoid((rho - i - 0.5) / tau), or 1[i < r] once hardened."""
        if self.hardened:
            return (self.component_index < self._hard_rank).to(self.lora_A.dtype)
        return torch.sigmoid((self.rho - self.component_index) / self.tau).to(self.lora_A.dtype)

    def soft_rank(self) -> torch.Tensor:
        """r_eff = sum(g), differentiable in rho."""
        return self.gate().sum()

    def current_hard_rank(self) -> int:
        """Components whose gate is open (> 0.5); the rank this layer would export with."""
        if self.hardened:
            return self._hard_rank
        return int((self.gate() > 0.5).sum())

    def scaling(self, gate: torch.Tensor | None = None) -> torch.Tensor | float:
        if not self.sqrt_scaling:
            return self.alpha / (self.hard_ref_rank if self.hardened else self.ref_rank)
        r_eff = (self.gate() if gate is None else gate).sum()
        return self.alpha / torch.sqrt(r_eff.clamp_min(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = W0 x + B (diag(s g) A) dropout(x)  (= W0 x + s * B (g * (A dropout(x))))."""
        y = self.base(x)
        if self.disabled or self.merged:
            return y
        g = self.gate()
        if self.probe_gate is not None:
            g = g * self.probe_gate.to(g.dtype)
        # Gate and scaling scale A's rows (R x d_in), not the activations: no elementwise pass
        # over (..., R) or (..., d_out), nothing extra saved for backward.
        a = self.lora_A * (g * self.scaling(g))[:, None]  # (R, d_in)
        x = self.dropout(x)
        h = F.linear(x, a)  # (..., R)
        if self.sensitivity is not None and h.requires_grad and not self.hardened:
            with torch.no_grad():  # every component as if its gate were open
                h_open = F.linear(x, self.lora_A) * self.scaling(g)
            h.register_hook(self._add_sensitivity(h_open))
        # y + h B^T in one kernel: (N, d_out)
        h = h.reshape(-1, self.r_max)  # (N, R)
        return torch.addmm(y.reshape(-1, self.d_out), h, self.lora_B.T).view(y.shape)

    def _add_sensitivity(self, h: torch.Tensor) -> Any:
        """A backward hook on the gated activations that adds sum_n (dL_n/dg_k)^2 to
        ``sensitivity`` (R,), with dL_n/dg_k = sum_t dL/dh_tk h_tk for ``h`` the activations
        with the gate open (..., R), per example n (a row, or a sequence of tokens t): the
        empirical Fisher of each gate. Half of it is the second-order cost of closing an open
        component, or the gain of opening a closed one (whose B keeps what it had learned);
        unlike the mean gradient it does not vanish where the loss is at a minimum."""

        def hook(grad: torch.Tensor) -> None:
            change = (grad.float() * h.float()).flatten(1, -2) if h.dim() > 2 else grad * h
            per_example = change.sum(1) if h.dim() > 2 else change.float()  # (n, R)
            self.sensitivity += per_example.square().sum(0)

        return hook

    def delta_weight(self) -> torch.Tensor:
        """s * B diag(g) A, shaped like the base weight (transposed for Conv1D)."""
        g = self.gate()
        delta = (self.lora_B * g) @ self.lora_A * self.scaling(g)  # (d_out, d_in)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight; merging twice merges once."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    @torch.no_grad()
    def harden(self, rank: int | None = None) -> None:
        """Freeze the gate to 1[i < rank] (default: the open gates) and zero B beyond it."""
        if self.merged:
            raise RuntimeError("unmerge() the adapter before hardening it")
        rank = self.current_hard_rank() if rank is None else int(rank)
        if not 0 <= rank <= self.r_max:
            raise ValueError(f"hard rank must be in [0, {self.r_max}], got {rank}")
        # The kept components keep their output exactly: their gate and the change of
        # scaling (to alpha / hard_ref_rank, or with sqrt scaling from alpha / sqrt(r_eff)
        # to alpha / sqrt(rank)) are folded into B. Only the closed components' output is
        # lost (property 7 bounds it).
        g = self.gate()
        soft_scale, hard_scale = self.scaling(g), self.alpha / self.hard_ref_rank
        if self.sqrt_scaling:
            hard_scale = self.alpha / math.sqrt(max(rank, 1))
        self.lora_B[:, :rank] *= (g[:rank] * (soft_scale / hard_scale)).to(self.lora_B.dtype)
        self.lora_B[:, rank:] = 0
        self.hard_rank.fill_(rank)
        self._hard_rank = rank
        self.rho.fill_(float(rank))
        self.rho.requires_grad_(False)

    @torch.no_grad()
    def keep_components(self, indices: list[int]) -> None:
        """Move the components ``indices`` (in that order) to the front and close the rest:
        B's other columns become 0, so the layer's output is what those components give.
        Then :meth:`harden` at ``len(indices)`` fixes the rank there."""
        if self.hardened or self.merged:
            raise RuntimeError("keep_components() needs a soft, unmerged layer")
        index = torch.tensor(indices, dtype=torch.long, device=self.lora_A.device)
        kept = set(indices)
        rest = [i for i in range(self.r_max) if i not in kept]
        order = torch.cat([index, torch.tensor(rest, dtype=torch.long, device=index.device)])
        self.lora_A.copy_(self.lora_A[order])
        self.lora_B.copy_(self.lora_B[:, order])
        self.lora_B[:, len(indices) :] = 0

    @torch.no_grad()
    def spectrum(self) -> torch.Tensor:
        """Singular values (R,), descending, of the gated update s * B diag(g) A: what the
        layer's best rank-k truncations keep. From a thin QR of B and A^T and the SVD of
        the small R x R core, so it costs O((d_in + d_out) R^2), not a d_out x d_in SVD."""
        g = self.gate().float()
        _, r_b = torch.linalg.qr(self.lora_B.float())  # (k_b, R)
        _, r_a = torch.linalg.qr(self.lora_A.float().T)  # (k_a, R)
        values = torch.linalg.svdvals((r_b * g) @ r_a.T)  # (min(k_b, k_a),)
        scale = self.scaling(g)
        values = values * (scale if isinstance(scale, float) else scale.float())
        return F.pad(values, (0, self.r_max - values.numel()))

    def component_strength(self) -> torch.Tensor:
        """||b_i|| * ||a_i|| * g_i for every component i (R,): what truncating i would remove."""
        return self.lora_B.norm(dim=0) * self.lora_A.norm(dim=1) * self.gate()

    @torch.no_grad()
    def rebalance(self, generator: torch.Generator | None = None, exact: bool = False) -> None:
        """Re-factor B diag(g) A so that components stand in order of singular value.

        B = Q_B R_B and A^T = Q_A R_A (thin QR); the SVD of the R x R core
        R_B diag(g) R_A^T = U S V^T gives B' = Q_B U S / c and A' = c V^T Q_A^T with c the
        RMS row norm of A, so B' A' = B diag(g) A exactly and any truncation of the new
        factors is the best low-rank approximation of the update. Keeping A's rows at their
        usual size (rather than S^1/2 on both sides) keeps weak components trainable.
        Rows of A beyond the core's rank are drawn afresh from ``generator`` (a CPU
        generator; default: torch's global one).

        The forward gates the new factors again, so the output is unchanged only where the
        gates are 1. With ``exact`` the new B's columns are divided by their gates (clamped
        at ``MIN_EXACT_GATE``), so that ``B' diag(g) A' = B diag(g) A`` wherever g >= 0.1.
        """
        if self.hardened or self.merged or not torch.any(self.lora_B):
            return
        dtype = self.lora_A.dtype
        a, b, g = self.lora_A.double(), self.lora_B.double(), self.gate().double()
        q_b, r_b = torch.linalg.qr(b)  # (d_out, k_b), (k_b, R)
        q_a, r_a = torch.linalg.qr(a.T)  # (d_in, k_a), (k_a, R)
        u, s, vh = torch.linalg.svd((r_b * g) @ r_a.T)  # k = min(k_b, k_a) components
        k = s.numel()
        c = a.norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-12)
        noise = torch.randn(a.shape, generator=generator, dtype=a.dtype).to(a.device)
        new_a = noise * c / math.sqrt(self.d_in)  # rows beyond k: fresh, B = 0
        new_b = torch.zeros_like(b)
        new_a[:k] = c * vh[:k] @ q_a.T
        new_b[:, :k] = q_b @ (u[:, :k] * s) / c
        if exact:
            new_b[:, :k] /= g[:k].clamp_min(MIN_EXACT_GATE)
        self.lora_A.copy_(new_a.to(dtype))
        self.lora_B.copy_(new_b.to(dtype))
