"""The hand allocation: a pure function of the layer shapes and the budget."""

import pytest

from lrlora.app.allocation import hand_ranks
from lrlora.report import role_of

ATTENTION = ["attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense"]  # fmt: skip


def minilm_layers(blocks: int = 6, hidden: int = 384, mlp: int = 1536) -> dict:
    """MiniLM-L6's six linear kinds per block: (d_in, d_out) by name."""
    layers = {}
    for block in range(blocks):
        prefix = f"bert.encoder.layer.{block}."
        layers |= {prefix + kind: (hidden, hidden) for kind in ATTENTION}
        layers[prefix + "intermediate.dense"] = (hidden, mlp)
        layers[prefix + "output.dense"] = (mlp, hidden)
    return layers


def params(layers: dict, ranks: dict) -> int:
    return sum(ranks[name] * (d_in + d_out) for name, (d_in, d_out) in layers.items())


def by_block(ranks: dict, kind: str) -> list[int]:
    found: dict[int, set[int]] = {}
    for name, rank in ranks.items():
        if role_of(name)[1] == kind:
            found.setdefault(int(name.split(".")[3]), set()).add(rank)
    assert all(len(ranks) == 1 for ranks in found.values())  # one rank per group
    return [found[block].pop() for block in sorted(found)]


@pytest.mark.parametrize("budget_rank", range(1, 9))
def test_minilm_costs_exactly_the_budget_and_follows_the_rule(budget_rank):
    layers = minilm_layers()
    budget = budget_rank * sum(d_in + d_out for d_in, d_out in layers.values())
    ranks = hand_ranks(layers, budget)
    assert params(layers, ranks) == budget
    attention, mlp = by_block(ranks, "attention"), by_block(ranks, "mlp")
    for kind in (attention, mlp):  # never falls with depth, and the top has more
        assert kind == sorted(kind) and kind[-1] > kind[0]
    assert all(m >= a for a, m in zip(attention, mlp, strict=True))
    assert sum(mlp) > sum(attention) or budget_rank == 1


def test_minilm_ranks_at_budget_ranks_1_and_2():
    """The allocations the glue-long suite trains (attention, MLP rank per block)."""
    layers = minilm_layers()
    per_rank = sum(d_in + d_out for d_in, d_out in layers.values())
    assert per_rank == 41_472
    one, two = hand_ranks(layers, per_rank), hand_ranks(layers, 2 * per_rank)
    assert by_block(one, "attention") == [0, 1, 1, 1, 1, 2] == by_block(one, "mlp")
    assert by_block(two, "attention") == [0, 1, 1, 1, 2, 2]
    assert by_block(two, "mlp") == [1, 2, 2, 3, 4, 4]


def test_closest_from_above_when_no_rounding_is_exact():
    layers = {"layer.0.query": (1, 2), "layer.1.query": (1, 2)}  # 3 parameters per rank
    ranks = hand_ranks(layers, 4)  # targets 4/9 and 8/9 of a rank: 0 and 1 cost 3 < 4
    assert ranks == {"layer.0.query": 1, "layer.1.query": 1} and params(layers, ranks) == 6
    exact = hand_ranks(layers, 9)  # targets 1 and 2
    assert exact == {"layer.0.query": 1, "layer.1.query": 2}


def test_blocks_count_from_the_shallowest_and_names_need_one():
    shifted = {f"layers.{b + 3}.mlp.down_proj": (8, 8) for b in range(2)}
    assert list(hand_ranks(shifted, 48).values()) == [1, 2]  # weights 1 and 2, as blocks 0, 1
    with pytest.raises(ValueError, match="block index"):
        hand_ranks({"pooler.dense": (8, 8)}, 16)
    with pytest.raises(ValueError, match="positive"):
        hand_ranks(minilm_layers(), 0)
