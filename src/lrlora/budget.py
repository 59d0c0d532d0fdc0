"""Fitting hard ranks into the budget: the last step of hardening."""

from __future__ import annotations

from .layer import LRLoRALinear


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
