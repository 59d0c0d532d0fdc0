"""The hand allocation: a fixed rank per layer, written down from what adaptive methods were
found to do, at the parameter budget of uniform LoRA.

The AdaLoRA paper (Zhang et al. 2023, Figures 1 and 3) found the feed-forward (MLP) layers
and the top blocks worth more rank than attention and the bottom blocks. The rule gives
layer l the target rank

    x_l = s * (i_l + 1) * (MLP_WEIGHT if l is an MLP layer else 1)

with i_l its block (0 = nearest the input) and s chosen so that the target costs the budget,
``sum_l x_l * (d_in_l + d_out_l) = budget``: rank grows linearly with depth, and an MLP layer
gets ``MLP_WEIGHT`` times the rank of attention in its block. Every layer that is not an MLP
layer (by :func:`lrlora.report.role_of`) counts as attention.

The ranks are a rounding of x. All the layers of one (block, attention or MLP) group share
a rank, floor(x) or floor(x) + 1, chosen so that

1. the rank never falls with depth, within attention or within the MLP, and a block's MLP
   never holds less rank than its attention;
2. the parameter count is the smallest at or above the budget: equal to it whenever a
   rounding reaches it exactly (as on MiniLM-L6 at every budget rank from 1 to 8), otherwise
   the closest a rounding gets from above;
3. among those, the ranks are the closest to x (squared rank error weighted by each group's
   cost per rank; further ties go to less rank in the shallower groups).

Rounding every group up meets 1 and costs at least the budget, so a solution always exists;
a dynamic programme over the groups, block by block, finds the best one. A layer at rank 0
gets no adapter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..report import depth_of, role_of

MLP_WEIGHT = 2.0
"""An MLP layer's target rank relative to attention's in the same block."""

Group = tuple[int, bool]
"""(block index counted from 0, is an MLP group)."""


def hand_ranks(layers: Mapping[str, tuple[int, int]], budget: int) -> dict[str, int]:
    """Rank per layer of the hand allocation (module docstring) for ``layers`` (module name
    -> (d_in, d_out)) at ``budget`` adapter parameters (a budget rank r is
    ``r * sum(d_in + d_out)``)."""
    if budget < 1:
        raise ValueError(f"the budget must be a positive number of parameters, got {budget}")
    members = _groups(layers)
    cost = {g: sum(sum(layers[n]) for n in names) for g, names in members.items()}
    weight = {g: (g[0] + 1) * (MLP_WEIGHT if g[1] else 1.0) for g in members}
    scale = budget / sum(weight[g] * cost[g] for g in members)
    ranks = _round({g: scale * weight[g] for g in members}, cost, budget)
    return {name: ranks[g] for g, names in members.items() for name in names}


def _groups(layers: Mapping[str, tuple[int, int]]) -> dict[Group, list[str]]:
    """Layer names by group, groups in block order, attention before MLP."""
    if not layers:
        raise ValueError("the hand allocation needs at least one layer")
    depths = {}
    for name in layers:
        depths[name] = depth_of(name)
        if depths[name] is None:
            raise ValueError(f"{name} has no block index: the hand allocation ranks by depth")
    blocks = {d: i for i, d in enumerate(sorted(set(depths.values())))}
    members: dict[Group, list[str]] = {}
    for name in sorted(layers, key=lambda n: (depths[n], role_of(n)[1] == "mlp")):
        group = (blocks[depths[name]], role_of(name)[1] == "mlp")
        members.setdefault(group, []).append(name)
    return members


def _round(target: dict[Group, float], cost: dict[Group, int], budget: int) -> dict[Group, int]:
    """Rule 1-3 of the module docstring. A state is (parameters so far, rank of the last
    attention group, rank of the last MLP group); each keeps its best (error, ranks)."""
    states: dict[tuple[int, int, int], tuple[float, tuple[int, ...]]] = {(0, 0, 0): (0.0, ())}
    for group, x in target.items():
        is_mlp = group[1]
        found: dict[tuple[int, int, int], tuple[float, tuple[int, ...]]] = {}
        for (spent, attention, mlp), (error, ranks) in states.items():
            lowest = max(attention, mlp) if is_mlp else attention  # rule 1
            for rank in {max(lowest, math.floor(x)), math.floor(x) + 1}:
                key = (spent + rank * cost[group], *((attention, rank) if is_mlp else (rank, mlp)))
                candidate = (error + cost[group] * (rank - x) ** 2, (*ranks, rank))
                if key not in found or candidate < found[key]:
                    found[key] = candidate
        states = found
    best = min((spent, *value) for (spent, _, _), value in states.items() if spent >= budget)
    return dict(zip(target, best[2], strict=True))
