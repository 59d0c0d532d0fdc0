"""The one configuration object of an LR-LoRA adapter.

Every field carries its own help text (``metadata["help"]``); the CLI and the saved
``lrlora_config.json`` are generated from this dataclass, so there is no second copy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from .util import excerpt
from .util import field_help as _help

RankMode = Literal["budget", "penalty"]
ScalingRule = Literal["budget", "max", "sqrt"]
TauShape = Literal["cosine", "linear", "exp"]
RankUpdate = Literal["shared", "optimizer", "prune"]
RebalanceMoments = Literal["reset", "rescale"]
Projection = Literal["cost", "even"]
PruneScaling = Literal["ceiling", "between"]

PRUNE_ONLY = ("prune_scaling", "prune_stages")
"""Settings that only ``rank_update='prune'`` reads: under another update they change
nothing, so a record that differs only in them ran the same."""

PRUNE_AT = 0.4
"""Where ``rank_update='prune'`` prunes by default, as a fraction of training: earlier, the
components are measured before they have grown; later, less of the run is left to train
the kept ones (docs/METHOD.md)."""


def default_harden_at(rank_update: str) -> float:
    """``harden_at`` when it is not given: where pruning prunes, else the end of training."""
    return PRUNE_AT if rank_update == "prune" else 1.0


RankSignal = Literal["gradient", "spectrum", "sensitivity"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_names(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


@dataclass
class LRLoRAConfig:
    """Where adapters go, how big they may get, and how their ranks are learned."""

    target_modules: list[str] | str = _help(
        "Modules to adapt: a list of names (a module matches an entry equal to its full "
        "name or to a dotted suffix of it: 'query' matches 'encoder.layer.0.attention.self.query'"
        ") or one regular expression that must match the full name.",
        default_factory=list,
    )
    exclude_modules: list[str] | str | None = _help(
        "Modules never adapted, with the same matching rules as target_modules.", None
    )
    modules_to_save: list[str] = _help(
        "Modules trained fully alongside the adapters, e.g. a classification head.",
        default_factory=list,
    )
    r_max: int = _help("Rank ceiling R: every adapter has R components.", 8)
    init_rank: float | None = _help(
        "Rank every layer starts at. Default: the budget rank in budget mode, else r_max.", None
    )
    alpha: float = _help("LoRA alpha; the adapter output is multiplied by a scaling s.", 16.0)
    dropout: float = _help("Dropout on the adapter's input.", 0.0)
    scaling: ScalingRule = _help(
        "Scaling rule: 'max' s = alpha / r_max (LoRA's scaling at the ceiling rank; the most "
        "stable in docs/ABLATIONS.md), 'budget' s = alpha / budget rank (LoRA's at the budget), "
        "'sqrt' s = alpha / sqrt(r_eff).",
        "max",
    )
    rank_lr: float = _help("Learning rate of the rank parameters rho (no weight decay).", 0.02)
    rank_update: RankUpdate = _help(
        "How each layer's rank is chosen. 'shared' (the default): the controller moves every "
        "rho by its gradient through the soft gates, with Adam whose second moment is shared "
        "by all layers (it needs the optimizer handed to the controller), while the "
        "allowance decays to the budget. 'optimizer': rho is left to the training "
        "optimizer. 'prune': rho is not trained; every layer trains as LoRA at init_rank "
        "(default: the ceiling r_max) until harden_at, where the controller measures what "
        "each component is worth to the loss on a few probe batches and keeps the most "
        "valuable per parameter, across layers, up to the budget. It needs a probe "
        "(RankController(probe=...); the Trainer callback, lrlora train and the suites build "
        "one). Pruning is the update that finds planted ranks (docs/RESULTS-planted.md); it "
        "is not the default yet because on the GLUE matrix it lost STS-B at the learning "
        "rate its tuning chose (docs/METHOD.md).",
        "shared",
    )
    prune_scaling: PruneScaling = _help(
        "Under 'prune', the scaling the kept components train at after pruning (B is "
        "rescaled there, so the output is kept). 'ceiling': the scaling the ceiling trained "
        "at (s = alpha / r_max under scaling='max'). 'between': the geometric mean of that "
        "and LoRA's at the budget rank, s = alpha / sqrt(r_max x budget rank): the ceiling's "
        "scaling keeps sixteen components stable, but trains the few kept ones slowly.",
        "between",
    )
    prune_stages: int = _help(
        "Under 'prune', the cuts that lead to the budget: 1 cuts once, at harden_at; 2 first "
        "keeps twice the budget at 5/8 of harden_at, so that what survives it trains longer "
        "before the final cut measures it (docs/METHOD.md).",
        1,
    )
    rank_signal: RankSignal = _help(
        "What moves rho under the shared rank update. 'spectrum': each layer's rank rises "
        "in proportion to the singular value of its gated update at the rank boundary (what "
        "closing the next gate would remove), so the budget projection keeps the singular "
        "values that are largest per parameter across layers. 'sensitivity': the same with "
        "each component's second-order loss cost of closing (the empirical Fisher of its "
        "gate) instead of its squared singular value. 'gradient': the task loss's gradient "
        "on rho through the gate.",
        "gradient",
    )
    tau_start: float = _help("Gate temperature at step 0.", 1.0)
    tau_end: float = _help("Gate temperature at the last step.", 0.05)
    tau_shape: TauShape = _help("Temperature schedule: 'cosine', 'linear' or 'exp'.", "cosine")
    rank_mode: RankMode = _help(
        "'budget': the adapter size follows an allowance that ends at the budget; "
        "'penalty': a fixed rank cost lambda, the size is whatever the trade-off gives.",
        "budget",
    )
    budget_rank: float | None = _help(
        "Budget as 'the size of LoRA at this rank on the same target modules'.", None
    )
    budget_params: int | None = _help("Budget as a total adapter parameter count.", None)
    penalty: float = _help("Penalty mode: lambda, the weight of the normalised rank cost.", 0.1)
    warmup_frac: float = _help(
        "Fraction of training during which the allowance holds the initial size.", 0.1
    )
    decay_end_frac: float = _help(
        "Fraction of training by which the allowance has decayed (cubically) to the budget.", 0.7
    )
    harden_at: float | None = _help(
        "Fraction of training after which the controller hardens the ranks itself, so that "
        "the remaining steps train the final adapter; 1.0 hardens only when harden() is "
        "called at the end. Default: 0.4 under rank_update='prune' (where it prunes), else 1.0.",
        None,
    )
    projection: Projection = _help(
        "How the budget projection and the shared rank update weigh a layer's cost. 'cost': "
        "every rho is shifted by delta x its cost per rank (normalised), and moved by its raw "
        "gradient. 'even': every rho is shifted by the same delta, and moved by its gradient "
        "per unit of cost. Both stop where the loss falls equally per parameter; 'even' does "
        "not move the costly (MLP) layers' ranks 2.5x further per step.",
        "cost",
    )
    fill_budget: bool = _help(
        "Budget mode: project rho onto the allowance from both sides, so rank one layer "
        "gives up goes to the others; False makes the allowance only a cap.",
        True,
    )
    rebalance_every: int = _help(
        "Every N optimizer steps up to decay_end_frac, re-order each layer's components by "
        "singular value so that the gate closes on the weakest (and reset their Adam "
        "moments); 0 (the default) turns it off: in runs of 200-400 steps it cost accuracy.",
        0,
    )
    rebalance_exact: bool = _help(
        "Re-balancing keeps the layer's output under soft gates: the new B is divided by the "
        "gate (down to 0.1) that the forward applies again. False: the new factors are gated "
        "a second time, which shrinks the update while the temperature is high.",
        False,
    )
    rebalance_moments: RebalanceMoments = _help(
        "What re-balancing does to the optimizer's moments of A and B: 'reset' drops them "
        "(Adam's next steps are full-size sign steps); 'rescale' zeroes the first moment and "
        "spreads the second evenly over the re-written components, keeping its scale and "
        "Adam's step count, so training resumes at its usual step size.",
        "reset",
    )

    def __post_init__(self) -> None:
        self._check_types()
        if self.harden_at is None:
            self.harden_at = default_harden_at(self.rank_update)
        self._check_targets()
        self._check_ranks()
        self._check_rank_update()
        self._check_schedules()

    def _check_types(self) -> None:
        """Every field holds its annotated type and every number is finite: a NaN passes
        every range check below, and a config read from JSON may hold anything."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, allowed = getattr(self, f.name), typing.get_args(hints[f.name])
            allowed = set(allowed or (hints[f.name],))
            if value is None and type(None) in allowed:
                continue
            if bool in allowed:
                ok, what = isinstance(value, bool), "True or False"
            elif int in allowed and float not in allowed:
                ok, what = _is_int(value), "an integer"
            elif float in allowed:
                ok, what = _is_number(value) and math.isfinite(value), "a finite number"
            else:
                continue
            if not ok:
                raise ValueError(f"{f.name} must be {what}, got {excerpt(value)}.")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if not isinstance(value, (str, type(None))) and not _is_names(value):
                raise ValueError(
                    f"{name} must be a list of module names or one regular expression, got "
                    f"{excerpt(value)}."
                )
        if self.modules_to_save is not None and not _is_names(self.modules_to_save):
            raise ValueError(
                f"modules_to_save must be a list of module names, got "
                f"{excerpt(self.modules_to_save)}."
            )

    def _check_targets(self) -> None:
        if not self.target_modules:
            raise ValueError(
                "target_modules is empty: name the linear layers to adapt, e.g. "
                "['query', 'value'] or a regex like r'.*\\.(q|v)_proj'."
            )
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self.modules_to_save = list(self.modules_to_save or [])

    def _check_ranks(self) -> None:
        if not isinstance(self.r_max, int) or self.r_max <= 0:
            raise ValueError(f"r_max must be a positive integer, got {excerpt(self.r_max)}.")
        if self.init_rank is not None and not 0 < self.init_rank <= self.r_max:
            raise ValueError(f"init_rank must be in (0, r_max={self.r_max}], got {self.init_rank}.")
        if self.rank_mode not in ("budget", "penalty"):
            raise ValueError(
                f"rank_mode must be 'budget' or 'penalty', got {excerpt(self.rank_mode)}."
            )
        if self.scaling not in ("budget", "max", "sqrt"):
            raise ValueError(
                f"scaling must be 'budget', 'max' or 'sqrt', got {excerpt(self.scaling)}."
            )
        if self.rank_mode == "budget":
            if (self.budget_rank is None) == (self.budget_params is None):
                raise ValueError(
                    "budget mode needs exactly one of budget_rank (LoRA-equivalent rank) or "
                    "budget_params (a parameter count); or use rank_mode='penalty'."
                )
            if self.budget_rank is not None and not 0 < self.budget_rank <= self.r_max:
                raise ValueError(
                    f"budget_rank={self.budget_rank} is impossible with r_max={self.r_max}: "
                    f"choose a budget rank in (0, {self.r_max}] or raise r_max."
                )
            if self.budget_params is not None and self.budget_params <= 0:
                raise ValueError(f"budget_params must be positive, got {self.budget_params}.")
        elif self.penalty < 0:
            raise ValueError(f"penalty (lambda) must be >= 0, got {self.penalty}.")
        if self.scaling == "budget" and self.budget_rank is None and self.budget_params is None:
            raise ValueError("scaling='budget' needs a budget; use scaling='max' in penalty mode.")

    def _check_rank_update(self) -> None:
        if self.rank_update not in ("shared", "optimizer", "prune"):
            raise ValueError(
                "rank_update must be 'shared', 'optimizer' or 'prune', got "
                f"{excerpt(self.rank_update)}."
            )
        if self.rank_update == "prune" and self.rank_mode != "budget":
            raise ValueError(
                "rank_mode='penalty' trades rank for loss while training, and "
                "rank_update='prune' cuts the adapter to a budget: with "
                "rank_mode='penalty' choose rank_update='shared' or 'optimizer'."
            )
        if self.rank_update == "prune" and self.harden_at >= 1:
            raise ValueError(
                "rank_update='prune' cuts the adapter to the budget at harden_at: it needs "
                f"harden_at < 1 (e.g. 0.4), got harden_at={self.harden_at}."
            )
        whole = self.init_rank is None or self.init_rank == int(self.init_rank)
        if self.rank_update == "prune" and not whole:
            raise ValueError(
                "rank_update='prune' trains every layer at a whole number of components "
                f"until it prunes: init_rank must be a whole number, got {self.init_rank}."
            )
        if self.rank_signal not in ("gradient", "spectrum", "sensitivity"):
            raise ValueError(
                "rank_signal must be 'gradient', 'spectrum' or 'sensitivity', got "
                f"{excerpt(self.rank_signal)}."
            )
        if self.rank_signal != "gradient" and self.rank_update != "shared":
            raise ValueError(
                f"rank_signal={self.rank_signal!r} moves rho through the shared rank update: "
                "set rank_update='shared' (or rank_signal='gradient')."
            )

    def _check_schedules(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.rank_lr <= 0:
            raise ValueError(f"rank_lr must be positive, got {self.rank_lr}.")
        if not 0 < self.tau_end <= self.tau_start:
            raise ValueError(
                f"temperature must fall: need 0 < tau_end <= tau_start, got "
                f"tau_start={self.tau_start}, tau_end={self.tau_end}."
            )
        if self.tau_shape not in ("cosine", "linear", "exp"):
            raise ValueError(
                f"tau_shape must be cosine, linear or exp, got {excerpt(self.tau_shape)}."
            )
        if not 0.0 <= self.warmup_frac <= self.decay_end_frac <= 1.0:
            raise ValueError(
                "the allowance schedule must satisfy 0 <= warmup_frac <= decay_end_frac <= 1 "
                f"(its decay cannot end before it starts); got warmup_frac={self.warmup_frac}, "
                f"decay_end_frac={self.decay_end_frac}."
            )
        if not 0.0 < self.harden_at <= 1.0:
            raise ValueError(
                f"harden_at must be in (0, 1] (a fraction of training), got {self.harden_at}."
            )
        if self.rebalance_every < 0:
            raise ValueError(f"rebalance_every must be >= 0, got {self.rebalance_every}.")
        if self.prune_stages not in (1, 2):
            raise ValueError(f"prune_stages must be 1 or 2, got {self.prune_stages!r}.")
        if self.prune_scaling not in ("ceiling", "between"):
            raise ValueError(
                f"prune_scaling must be 'ceiling' or 'between', got {self.prune_scaling!r}."
            )
        if self.projection not in ("cost", "even"):
            raise ValueError(f"projection must be 'cost' or 'even', got {self.projection!r}.")
        if self.rebalance_moments not in ("reset", "rescale"):
            raise ValueError(
                f"rebalance_moments must be 'reset' or 'rescale', got {self.rebalance_moments!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LRLoRAConfig:
        if not isinstance(data, dict):
            raise ValueError(f"an LRLoRAConfig is a JSON object of fields, got {excerpt(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown LRLoRAConfig fields {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
