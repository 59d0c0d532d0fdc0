"""Numbers of the quality matrix, from its final result records.

- :class:`Cell`: one (task, method): score per seed, mean and sample standard deviation
  (n - 1), mean final adapter parameters.
- :func:`averages`: each method's mean over the tasks where every method is complete;
  :func:`overall_averages`: over all tasks, for the methods complete on every one.
- :func:`duels`: LR-LoRA against each baseline per task: difference of the means and the
  per-seed paired count of wins, losses and ties.
- :func:`rank_rows`: LR-LoRA's final per-layer ranks by task, for the rank figures.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .suites import Matrix

OURS = "lr-lora"


@dataclass
class Cell:
    """The final runs of one (task, method)."""

    task: str
    method: str
    planned: int
    """Seeds in the matrix."""
    scores: dict[int, float] = field(default_factory=dict)
    """Seed -> score of the runs that finished training."""
    params: list[int] = field(default_factory=list)
    diverged: int = 0

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def complete(self) -> bool:
        """Every planned seed has a result (a diverged run counts as a result)."""
        return self.n > 0 and self.n + self.diverged >= self.planned

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores.values()) if self.scores else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.scores.values()) if self.n > 1 else None

    @property
    def mean_params(self) -> float | None:
        return statistics.fmean(self.params) if self.params else None


def cells(matrix: Matrix, results: list[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """One cell per (task, method) of the matrix, filled from the final result records."""
    table = {(t, m): Cell(t, m, len(matrix.seeds)) for t in matrix.tasks for m in matrix.methods}
    for result in results:
        cell = table.get((result["task"], result["method"]))
        if cell is None or result["seed"] not in matrix.seeds:
            continue
        if result["status"] != "ok":
            cell.diverged += 1
            continue
        cell.scores[result["seed"]] = result["score"]
        cell.params.append(result["metrics"]["adapter_params"])
    return table


def complete_tasks(matrix: Matrix, table: dict[tuple[str, str], Cell]) -> list[str]:
    """Tasks where every method has all its runs."""
    return [t for t in matrix.tasks if all(table[t, m].complete for m in matrix.methods)]


def averages(matrix: Matrix, table: dict[tuple[str, str], Cell]) -> dict[str, float | None]:
    """Each method's mean score over :func:`complete_tasks` (None if there are none)."""
    tasks = complete_tasks(matrix, table)
    if not tasks:
        return dict.fromkeys(matrix.methods)
    return {m: statistics.fmean(table[t, m].mean for t in tasks) for m in matrix.methods}


def overall_averages(matrix: Matrix, table: dict[tuple[str, str], Cell]) -> dict[str, float | None]:
    """Each method's mean score over all the matrix's tasks, for the methods complete on
    every one of them (None for the others)."""
    return {
        m: statistics.fmean(table[t, m].mean for t in matrix.tasks)
        if all(table[t, m].complete for t in matrix.tasks)
        else None
        for m in matrix.methods
    }


@dataclass
class Duel:
    """LR-LoRA against one baseline on one task."""

    task: str
    baseline: str
    diff: float | None
    """Mean of LR-LoRA minus mean of the baseline (None while either has no run)."""
    wins: int
    losses: int
    ties: int
    """Per seed, over the seeds both methods have."""


def duels(matrix: Matrix, table: dict[tuple[str, str], Cell], ours: str = OURS) -> list[Duel]:
    """One :class:`Duel` per (task, baseline); empty if ``ours`` is not in the matrix."""
    if ours not in matrix.methods:
        return []
    found = []
    for task in matrix.tasks:
        mine = table[task, ours]
        for baseline in (m for m in matrix.methods if m != ours):
            other = table[task, baseline]
            seeds = sorted(set(mine.scores) & set(other.scores))
            diffs = [mine.scores[s] - other.scores[s] for s in seeds]
            both = mine.mean is not None and other.mean is not None
            diff = mine.mean - other.mean if both else None
            found.append(
                Duel(
                    task,
                    baseline,
                    diff,
                    sum(d > 0 for d in diffs),
                    sum(d < 0 for d in diffs),
                    sum(d == 0 for d in diffs),
                )
            )
    return found


def rank_rows(results: list[dict[str, Any]], method: str = OURS) -> dict[str, list[dict]]:
    """Task -> the final rank rows of every finished ``method`` run (all seeds pooled)."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        if result["method"] == method and result["status"] == "ok" and result.get("ranks"):
            rows[result["task"]] += result["ranks"]
    return dict(rows)


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per layer: hard rank (one decimal), rho and params averaged over the runs."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_name[row["name"]].append(row)
    merged = []
    for group in by_name.values():
        row = dict(group[0])
        for key in ("hard_rank", "rho", "params"):
            row[key] = statistics.fmean(r[key] for r in group)
        row["hard_rank"] = round(row["hard_rank"], 1)
        merged.append(row)
    return merged


def params_by_kind(rows_by_task: dict[str, list[dict]]) -> dict[str, float]:
    """Share of the adapter parameters held by each layer kind (attention, mlp, ...)."""
    totals: dict[str, float] = defaultdict(float)
    for rows in rows_by_task.values():
        for row in rows:
            totals[row["kind"]] += row["params"]
    grand = sum(totals.values())
    return {kind: value / grand for kind, value in totals.items()} if grand else {}


def cost_per_rank(rows_by_task: dict[str, list[dict]]) -> dict[str, float]:
    """Mean parameters one rank costs, by layer kind (d_in + d_out of its layers)."""
    costs: dict[str, list[float]] = defaultdict(list)
    for rows in rows_by_task.values():
        for row in rows:
            if row["hard_rank"] > 0:
                costs[row["kind"]].append(row["params"] / row["hard_rank"])
    return {kind: statistics.fmean(values) for kind, values in costs.items()}
