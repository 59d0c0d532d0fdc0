"""Which layers needed how much rank: per-layer rows and a printable table."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from torch import nn

from .inject import lora_layers

# (name suffix, role, kind); first match wins, so the specific suffixes come first.
_ROLES: tuple[tuple[str, str, str], ...] = (
    ("attention.output.dense", "attn_out", "attention"),
    ("attn.c_proj", "attn_out", "attention"),
    ("attn.c_attn", "qkv", "attention"),
    ("query", "query", "attention"),
    ("q_proj", "query", "attention"),
    ("key", "key", "attention"),
    ("k_proj", "key", "attention"),
    ("value", "value", "attention"),
    ("v_proj", "value", "attention"),
    ("o_proj", "attn_out", "attention"),
    ("out_proj", "attn_out", "attention"),
    ("intermediate.dense", "mlp_in", "mlp"),
    ("gate_proj", "mlp_in", "mlp"),
    ("up_proj", "mlp_in", "mlp"),
    ("c_fc", "mlp_in", "mlp"),
    ("fc1", "mlp_in", "mlp"),
    ("output.dense", "mlp_out", "mlp"),
    ("down_proj", "mlp_out", "mlp"),
    ("mlp.c_proj", "mlp_out", "mlp"),
    ("fc2", "mlp_out", "mlp"),
)
ROLE_ORDER = ("query", "key", "value", "qkv", "attn_out", "mlp_in", "mlp_out", "other")


def role_of(name: str) -> tuple[str, str]:
    """(role, kind) of a module name: e.g. ('value', 'attention') or ('mlp_out', 'mlp')."""
    for suffix, role, kind in _ROLES:
        if name == suffix or name.endswith("." + suffix):
            return role, kind
    return "other", "other"


def depth_of(name: str) -> int | None:
    """The block index: the first integer component of the dotted name."""
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(match.group(1)) if match else None


@dataclass
class RankRow:
    name: str
    kind: str
    role: str
    depth: int | None
    r_max: int
    rho: float
    hard_rank: int
    params: int


def rank_report(model: nn.Module, *, show: bool = False) -> list[dict]:
    """One row per adapted layer (see :class:`RankRow`); ``show`` prints the table."""
    rows = []
    for name, layer in lora_layers(model):
        role, kind = role_of(name)
        rank = layer.current_hard_rank()
        rows.append(
            RankRow(
                name,
                kind,
                role,
                depth_of(name),
                layer.r_max,
                float(layer.rho),
                rank,
                rank * layer.cost_per_rank,
            )
        )
    rows = [asdict(r) for r in rows]
    if show:
        print(format_report(rows))
    return rows


def format_report(rows: list[dict]) -> str:
    """A fixed-width table of the rows, then totals by kind."""
    width = max([len(r["name"]) for r in rows] + [6])
    header = f"{'kind':<9} {'depth':>5} {'R':>3} {'rho':>6} {'rank':>4} {'params':>8}"
    lines = [f"{'module':<{width}}  {header}"]
    for r in rows:
        depth = "-" if r["depth"] is None else r["depth"]
        lines.append(
            f"{r['name']:<{width}}  {r['kind']:<9} {depth:>5} {r['r_max']:>3} "
            f"{r['rho']:>6.2f} {r['hard_rank']:>4} {r['params']:>8,}"
        )
    for kind in ("attention", "mlp", "other"):
        group = [r for r in rows if r["kind"] == kind]
        if group:
            mean = sum(r["hard_rank"] for r in group) / len(group)
            params = sum(r["params"] for r in group)
            lines.append(f"{kind}: {len(group)} layers, mean rank {mean:.2f}, {params:,} params")
    lines.append(f"total adapter parameters: {sum(r['params'] for r in rows):,}")
    return "\n".join(lines)
