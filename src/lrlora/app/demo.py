"""A teacher/student problem where the true per-layer update ranks are known.

Four frozen random linear maps W0_l (d x d) each get a hidden update of rank ``true_ranks[l]``;
the student adapts all four with LR-LoRA under a budget equal to the true total and must
find out, from data alone, which layer needs how much rank.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LRLoRAConfig
from ..controller import RankController
from ..inject import inject, optimizer_groups
from ..report import rank_report


class Parallel(nn.Module):
    """Independent linear layers applied to the same input: y_l = W_l x."""

    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([layer(x) for layer in self.layers])  # (n, batch, d)


def make_problem(true_ranks: tuple[int, ...], d: int, seed: int) -> tuple[Parallel, Parallel]:
    gen = torch.Generator().manual_seed(seed)
    student = Parallel(len(true_ranks), d)
    teacher = Parallel(len(true_ranks), d)
    with torch.no_grad():
        for s, t, r in zip(student.layers, teacher.layers, true_ranks, strict=True):
            s.weight.copy_(torch.randn(d, d, generator=gen) / d**0.5)
            update = torch.randn(d, r, generator=gen) @ torch.randn(r, d, generator=gen) / d**0.5
            t.weight.copy_(s.weight + update)
    return student, teacher


def run(
    true_ranks: tuple[int, ...] = (1, 3, 6, 10),
    d: int = 32,
    r_max: int = 12,
    steps: int = 600,
    seed: int = 0,
    show: bool = True,
) -> list[dict]:
    """Train the student under a budget equal to the true total rank; return the report."""
    torch.manual_seed(seed)
    student, teacher = make_problem(true_ranks, d, seed)
    config = LRLoRAConfig(
        target_modules=r"layers\.\d+",
        r_max=r_max,
        alpha=r_max,
        budget_rank=sum(true_ranks) / len(true_ranks),
        rank_update="prune",
    )
    inject(student, config)
    optimizer = torch.optim.Adam(optimizer_groups(student, lr=1e-2))
    probes = [torch.randn(64, d) for _ in range(RankController.PROBE_BATCHES)]

    def probe(i: int) -> torch.Tensor:  # what pruning measures the components on
        return (student(probes[i]) - teacher(probes[i])).pow(2).mean()

    controller = RankController(student, optimizer, total_steps=steps, probe=probe)
    for _ in range(steps):
        x = torch.randn(64, d)
        loss = (student(x) - teacher(x)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # also steps the controller
    controller.harden()
    rows = rank_report(student, show=show)
    if show:
        print(f"true ranks: {list(true_ranks)}; final loss {loss.item():.4f}")
    return rows
