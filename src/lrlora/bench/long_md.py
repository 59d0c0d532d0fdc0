"""The glue-long suite's report, ``docs/RESULTS-long.md``, and its premise check.

The premise: at this sizing rank pays, so that where it goes can matter. On a task it
holds when LoRA's mean dev score at budget rank 8 is above its mean at rank 1 by more than
the seed spread, the larger of the two budgets' ranges (best minus worst seed); an equal
gain does not count. A task is undecided until both budgets have a result for every planned
seed; a diverged run has no score (a budget whose runs all diverged fails the task). The
premise holds when it holds on every task but one (3 of the 4), and fails as soon as that
can no longer happen. :func:`premise` decides it from the final result records alone.

The report sets out, from the result files only: the sizing, the premise, each budget
rank's task x method table with LR-LoRA's wins and losses against each baseline, the
learning rates chosen, and where LR-LoRA put its rank by role and depth beside the hand
allocation. With no results it says so and still lists what will run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..app.plots import summarize_ranks
from ..util import write_text_atomic
from . import aggregate as agg
from .plan import FINAL, TUNE, BenchPlan, LRChoice, format_lr
from .results_md import DASH, cell_text, duel_cell
from .suites import GLUE_TRAIN_ROWS

PREMISE_METHOD, PREMISE_LOW, PREMISE_HIGH = "lora", 1, 8
HOLDS, FAILS, PENDING = "holds", "fails", "pending"


# -- the premise ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskPremise:
    """LoRA at the low and the high budget rank on one task, seed by seed."""

    task: str
    seeds: tuple[int, ...]
    low: dict[int, float | None]
    """Seed -> score at the low budget rank (None: the run diverged); planned seeds only."""
    high: dict[int, float | None]

    @property
    def missing(self) -> int:
        """Planned runs of the two budgets without a result."""
        return sum(s not in found for found in (self.low, self.high) for s in self.seeds)

    @property
    def gain(self) -> float | None:
        """Mean score at the high budget minus the mean at the low (None: one has none)."""
        low, high = _scored(self.low), _scored(self.high)
        return statistics.fmean(high) - statistics.fmean(low) if low and high else None

    @property
    def spread(self) -> float | None:
        """The larger of the two budgets' ranges, best minus worst seed."""
        ranges = [max(v) - min(v) for v in (_scored(self.low), _scored(self.high)) if v]
        return max(ranges) if ranges else None

    @property
    def verdict(self) -> str:
        if self.missing:
            return PENDING
        gain, spread = self.gain, self.spread
        return HOLDS if gain is not None and gain > spread else FAILS


def _scored(scores: dict[int, float | None]) -> list[float]:
    return [v for v in scores.values() if v is not None]


@dataclass(frozen=True)
class Premise:
    tasks: tuple[TaskPremise, ...]

    @property
    def needed(self) -> int:
        """Tasks it must hold on: all but one."""
        return max(1, len(self.tasks) - 1)

    def count(self, verdict: str) -> int:
        return sum(t.verdict == verdict for t in self.tasks)

    @property
    def verdict(self) -> str:
        if self.count(HOLDS) >= self.needed:
            return HOLDS
        return FAILS if self.count(HOLDS) + self.count(PENDING) < self.needed else PENDING


def premise(
    results: list[dict[str, Any]],
    tasks: tuple[str, ...],
    seeds: tuple[int, ...],
    low: int = PREMISE_LOW,
    high: int = PREMISE_HIGH,
    method: str = PREMISE_METHOD,
) -> Premise:
    """The premise check (module docstring) from result records of any budgets and methods:
    the final runs of ``method`` at budget ranks ``low`` and ``high`` on ``tasks`` and
    ``seeds`` count."""
    found: dict[tuple[str, int], dict[int, float | None]] = {}
    for r in results:
        final = r.get("stage") != TUNE and r.get("seed") in seeds
        if final and r.get("method") == method and r.get("task") in tasks:
            score = r["score"] if r.get("status") == "ok" else None
            found.setdefault((r["task"], r.get("budget_rank")), {})[r["seed"]] = score
    return Premise(tuple(
        TaskPremise(t, seeds, found.get((t, low), {}), found.get((t, high), {})) for t in tasks
    ))  # fmt: skip


# -- the report -----------------------------------------------------------------------------------
def _header(plans: dict[int, BenchPlan], command: list[str] | None) -> list[str]:
    any_plan = next(iter(plans.values()))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    done = [r for p in plans.values() for r in p.done.values()]
    lines = [
        f"# Quality benchmark: {any_plan.matrix.label}, trained for epochs at budget ranks "
        + ", ".join(map(str, plans)),
        "",
        f"Generated by `{' '.join(command or ['lrlora', 'bench', '--report-only'])}` on {now} "
        f"from the result files in `{any_plan.results_dir}` (one JSON per run; do not edit "
        "this file by hand).",
        "",
    ]
    if not done:
        return [*lines, "**Nothing has run yet**: no result of this suite is in the results "
                "directory, so every table below is empty. The runs start with the premise: "
                "`lrlora bench --suite glue-long --premise`."]  # fmt: skip
    stamps = sorted(r["timestamp"] for r in done if r.get("timestamp"))
    if stamps:
        lines.append(f"- Runs made {stamps[0]} to {stamps[-1]}.")
    for rank, plan in plans.items():
        tune = [s for s in plan.runs if s.stage == TUNE]
        n_final = sum(s.stage == FINAL for s in plan.runs) + plan.n_waiting
        lines.append(
            f"- Budget rank {rank}: {sum(s.id in plan.done for s in tune)}/{len(tune)} tuning "
            f"runs and {len(plan.results(FINAL))}/{n_final} final runs finished."
        )
    return lines


def _setup(plans: dict[int, BenchPlan]) -> list[str]:
    m = next(iter(plans.values())).matrix
    methods = "; ".join(f"{rank}: {', '.join(p.matrix.methods)}" for rank, p in plans.items())
    lines = [
        "", "## Setup", "",
        f"Methods by budget rank: {methods}. A budget is the adapter parameters of LoRA at "
        "that rank on the six linear layers of every block (query, key, value, attention "
        "output, MLP in, MLP out); AdaLoRA's target rank and LR-LoRA's budget are the same, "
        "and `hand` is LoRA with a fixed rank per layer that grows with depth, the MLP's "
        "target twice attention's, costing the budget (`lrlora/app/allocation.py`). Final "
        f"runs use seeds {', '.join(map(str, m.seeds))} and are scored on dev (the mean of "
        "the task's metrics, in percent). Within a task every method and budget trains the "
        "same steps, batch and schedule (AdamW, linear warm-up over 6% then linear decay); "
        "the sizing and its time estimate are in `lrlora/bench/suites.py`.", "",
        "| task | training rows | passes | steps (final) | steps (tuning) | batch | max tokens "
        "| validation slice |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for s in m.sizing.values():
        rows = s.train_limit or GLUE_TRAIN_ROWS.get(s.task)
        passes = DASH if rows is None else f"{s.steps * s.batch_size / rows:.1f}"
        lines.append(
            f"| {s.task} | {DASH if rows is None else f'{rows:,}'} | {passes} | {s.steps} | "
            f"{s.tune_steps} | {s.batch_size} | {s.max_length} | {s.val_fraction:.0%} of train |"
        )
    return lines


def _premise_section(plans: dict[int, BenchPlan]) -> list[str]:
    m = next(iter(plans.values())).matrix
    results = [r for p in plans.values() for r in p.results(FINAL)]
    found = premise(results, m.tasks, m.seeds)
    lines = [
        "", "## The premise: does rank pay at this sizing?", "",
        f"On each task LoRA at budget rank {PREMISE_HIGH} must score above LoRA at budget rank "
        f"{PREMISE_LOW} (means over seeds) by more than the seed spread, the larger of the "
        "two ranges (best minus worst seed). It must hold on all tasks but one "
        f"({found.needed} of {len(m.tasks)}); otherwise this sizing does not reward rank, and "
        "no allocation of it can be told apart.", "",
        f"| task | LoRA r{PREMISE_LOW} per seed | LoRA r{PREMISE_HIGH} per seed | gain | seed "
        "spread | verdict |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for t in found.tasks:
        cells = [_per_seed(t.seeds, t.low), _per_seed(t.seeds, t.high), _num(t.gain, True),
                 _num(t.spread), t.verdict]  # fmt: skip
        lines.append(f"| {t.task} | {' | '.join(cells)} |")
    tally = (
        f"of the {len(found.tasks)} task(s) it holds on {found.count(HOLDS)}, fails on "
        f"{found.count(FAILS)} and is undecided on {found.count(PENDING)}"
    )
    verdict = {HOLDS: "**The premise holds**", FAILS: "**The premise fails**",
               PENDING: "**The premise is not decided yet**"}[found.verdict]  # fmt: skip
    return [*lines, "", f"{verdict}: {tally}."]


def _per_seed(seeds: tuple[int, ...], scores: dict[int, float | None]) -> str:
    if not scores:
        return DASH
    return " / ".join(
        DASH if s not in scores else "diverged" if scores[s] is None else f"{scores[s]:.2f}"
        for s in seeds
    )


def _num(value: float | None, sign: bool = False) -> str:
    return DASH if value is None else f"{value:+.2f}" if sign else f"{value:.2f}"


def _budget_section(rank: int, plan: BenchPlan) -> list[str]:
    """The task x method table at one budget rank, and LR-LoRA against each baseline."""
    m = plan.matrix
    table = agg.cells(m, plan.results(FINAL))
    lines = [
        "", f"## Budget rank {rank}", "",
        "Mean ± sample standard deviation of the dev score over seeds; under it the seeds "
        "finished and the final adapter parameters (mean over seeds; the task head, trained "
        "by every method, is not counted).", "",
        f"| method | {' | '.join(m.tasks)} |", "|---" * (len(m.tasks) + 1) + "|",
    ]  # fmt: skip
    for method in m.methods:
        lines.append(f"| {method} | {' | '.join(cell_text(table[t, method]) for t in m.tasks)} |")
    found = agg.duels(m, table)
    if not found:
        return lines
    lines += ["", "LR-LoRA's mean minus each baseline's, and in brackets the seeds won–lost–"
              "tied (same seed, same training rows):", "",
              f"| baseline | {' | '.join(m.tasks)} | tasks won–lost |",
              "|---" * (len(m.tasks) + 2) + "|"]  # fmt: skip
    for baseline in dict.fromkeys(d.baseline for d in found):
        mine = [d for d in found if d.baseline == baseline]
        won = sum(d.diff is not None and d.diff > 0 for d in mine)
        lost = sum(d.diff is not None and d.diff < 0 for d in mine)
        lines.append(f"| {baseline} | {' | '.join(map(duel_cell, mine))} | {won}–{lost} |")
    return lines


def _lr_section(plans: dict[int, BenchPlan]) -> list[str]:
    m = next(iter(plans.values())).matrix
    grids = {tuple(g) for g in m.lr_grid.values()}
    grid = " / ".join(map(format_lr, grids.pop())) if len(grids) == 1 else "its grid"
    lines = [
        "", "## Learning rates", "",
        f"One rate per task, method and budget rank, picked on the validation slice (carved "
        f"out of the training split, never dev) by tuning runs of seed {m.tune_seed} at half "
        f"the steps; ties go to the smaller rate. Each cell: the rate chosen, under it the "
        f"validation score at {grid}.", "",
        f"| budget rank | method | {' | '.join(m.tasks)} |", "|---" * (len(m.tasks) + 2) + "|",
    ]  # fmt: skip
    for rank, plan in plans.items():
        for method in plan.matrix.methods:
            cells = [_choice_text(plan.choices.get((task, method))) for task in m.tasks]
            lines.append(f"| {rank} | {method} | {' | '.join(cells)} |")
    return lines


def _choice_text(choice: LRChoice | None) -> str:
    if choice is None:
        return "tuning pending"
    scores = " / ".join(_num(score) for _, score in sorted(choice.scores.items()))
    return f"{format_lr(choice.chosen)}<br><sub>{scores}</sub>"


def _rank_section(plans: dict[int, BenchPlan]) -> list[str]:
    lines = ["", "## Where LR-LoRA put its rank, beside the hand allocation", ""]
    tables = []
    for rank, plan in plans.items():
        ours = agg.rank_rows(plan.results(FINAL))
        if not ours:
            continue
        rows = {"lr-lora": summarize_ranks(ours)["by_depth"]}
        hand = agg.rank_rows(plan.results(FINAL), method="hand")
        if hand:  # the hand ranks are the same on every task; no adapter = rank 0
            fixed = {row["name"]: row["hard_rank"] for row in next(iter(hand.values()))}
            padded = [{**row, "hard_rank": fixed.get(row["name"], 0)} for row in
                      next(iter(ours.values()))]  # fmt: skip
            rows["hand"] = summarize_ranks({"hand": padded})["by_depth"]
        runs = sum(r["method"] == agg.OURS and r["status"] == "ok" for r in plan.results(FINAL))
        tables += _rank_table(rank, rows, runs)
    if not tables:
        return [*lines, "No LR-LoRA final run has finished yet."]
    intro = (
        "Mean hard rank of the attention and the MLP layers of each block: LR-LoRA's learned "
        "ranks over every task and seed finished, the hand allocation's fixed ones (0: no "
        "adapter)."
    )
    return [*lines, intro, *tables]


def _rank_table(rank: int, rows: dict[str, dict], runs: int) -> list[str]:
    depths = sorted({d for by_depth in rows.values() for means in by_depth.values()
                     for d in means})  # fmt: skip
    lines = ["", f"Budget rank {rank}, LR-LoRA final runs finished: {runs}.", "",
             f"| method | layers | {' | '.join(f'block {d}' for d in depths)} |",
             "|---" * (len(depths) + 2) + "|"]  # fmt: skip
    for method, by_depth in rows.items():
        for kind, means in by_depth.items():
            cells = [_num(means.get(d)) for d in depths]
            lines.append(f"| {method} | {'MLP' if kind == 'mlp' else kind} | {' | '.join(cells)} |")
    return lines


def render(plans: dict[int, BenchPlan], command: list[str] | None = None) -> str:
    """The report's Markdown from the plans of every budget rank (rank -> plan)."""
    sections = [_header(plans, command), _setup(plans), _premise_section(plans)]
    sections += [_budget_section(rank, plan) for rank, plan in plans.items()]
    sections += [_lr_section(plans), _rank_section(plans)]
    return "\n".join(line for section in sections for line in section) + "\n"


def write_report(
    plans: dict[int, BenchPlan], path: str | Path, command: list[str] | None = None
) -> Path:
    """Write the report of ``plans`` (budget rank -> plan) to ``path``."""
    write_text_atomic(Path(path), render(plans, command))
    return Path(path)
