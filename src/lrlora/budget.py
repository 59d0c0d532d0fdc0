"""Fitting hard ranks into the budget: the last step of hardening."""

from __future__ import annotations

from .config import LRLoRAConfig
from .layer import LRLoRALinear


def config_budget(config: LRLoRAConfig, costs: list[int]) -> float:
    """The adapter size (parameters) ``config`` allows layers costing ``costs`` per rank:
    LoRA at ``budget_rank`` on them, or ``budget_params``; without a budget (penalty mode)
    ``r_max`` ranks each. It depends on the config and the layers only, never on saved
    state, so no file can raise it."""
    per_rank = sum(costs)
    if config.budget_rank is not None:
        rank = float(config.budget_rank)
    elif config.budget_params is not None:
        rank = config.budget_params / per_rank
    else:
        rank = float(config.r_max)
    return rank * per_rank


def trim_to_budget(layers: list[LRLoRALinear], ranks: list[int], budget: float) -> list[int]:
    """Drop the weakest top components (by their output's size ||b_i|| ||a_i|| g_i per
    parameter) until the hard adapter fits in ``budget`` parameters."""
    ranks = list(ranks)
    strengths = [layer.component_strength().detach() for layer in layers]

    def size() -> int:
        return sum(r * layer.cost_per_rank for r, layer in zip(ranks, layers, strict=True))

    while size() > budget + 1e-6:
        candidates = [
            (float(strengths[i][ranks[i] - 1]) / layers[i].cost_per_rank, i)
            for i in range(len(layers))
            if ranks[i] > 0
        ]
        _, weakest = min(candidates)
        ranks[weakest] -= 1
    return ranks


def most_valuable(values: list[list[float]], costs: list[int], budget: float) -> list[list[int]]:
    """The components to keep: every layer's components by ``values[l][i]`` (what the loss
    loses without them) per parameter, the best first across layers, each taken while it
    fits in ``budget`` parameters; a component worth nothing or less is never kept.
    Returns each layer's kept component indices, in order of value."""
    ranked = sorted(
        ((value / costs[k], k, i) for k, row in enumerate(values) for i, value in enumerate(row)),
        key=lambda item: -item[0],
    )
    kept: list[list[int]] = [[] for _ in values]
    size = 0.0
    for per_param, layer, index in ranked:
        if per_param <= 0:
            break
        if size + costs[layer] <= budget + 1e-6:
            kept[layer].append(index)
            size += costs[layer]
    return kept
