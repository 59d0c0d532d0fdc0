"""The final results a quality report's tables leave out, so that the record keeps them:
runs recorded with other settings than this version trains with (set aside in
``results/stale/`` when they went stale, or left in place) and runs at another learning
rate than the tables use.

:func:`earlier_groups` reads them and groups them by task, method, rate and the settings
they were recorded with. A file that another names as its ``relabelled_from`` is left out:
the relabelled copy (same run, the method named by its settings) stands for it.
:func:`section` renders the report's section: each group's scores per seed, mean and
sample std, where an LR-LoRA method put its rank, and the paired difference to the runs
that differ from it only in the settings its variant changes (its reference).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..app.plots import summarize_ranks
from ..util import shape_mismatch
from .aggregate import OURS
from .plan import FINAL, RESULT_SHAPE, BenchPlan, format_lr, planned_settings, settings
from .suites import base_method, is_variant
from .variants import split_method

STALE_DIR = "stale"


@dataclass
class Group:
    """The final runs of one (task, method, rate) recorded with the same settings."""

    task: str
    method: str
    lr: float
    settings: dict[str, Any]
    """The method's settings the runs were recorded with (:func:`~lrlora.bench.plan.settings`)."""
    unlike_today: dict[str, Any]
    """The settings and task sizing that differ from what this version runs."""
    stale: bool
    """Kept in ``results/stale/``."""
    scores: dict[int, float | None] = field(default_factory=dict)
    """Seed -> score (None: the run diverged)."""
    stamps: list[str] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)
    number: int | None = None
    """Its row in the section; None for a cell of the report's own tables."""

    @property
    def finished(self) -> dict[int, float]:
        return {s: v for s, v in self.scores.items() if v is not None}


def _final_results(plan: BenchPlan) -> list[tuple[dict[str, Any], bool]]:
    """(result, kept in stale/) of every readable final result of the plan's label, budget
    rank and tasks in the results directory and its ``stale/``, less the relabelled."""
    m = plan.matrix
    found, relabelled = [], set()
    for stale, folder in ((False, plan.results_dir), (True, plan.results_dir / STALE_DIR)):
        for path in sorted(Path(folder).glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):
                continue
            if not isinstance(data, dict) or shape_mismatch(data, RESULT_SHAPE):
                continue
            source = data.get("relabelled_from")
            if isinstance(source, dict) and isinstance(source.get("file"), str):
                relabelled.add(source["file"])
            parts = data["id"].split("/")  # label/task/method/rN/lrX/sN; tuning runs have 7
            if len(parts) != 6 or parts[0] != m.label or parts[3] != f"r{m.budget_rank}":
                continue
            if data.get("task") not in m.tasks or "seed" not in data:
                continue
            if not math.isfinite(data.get("lr", math.nan)):
                continue
            if data["status"] == "ok" and data["score"] is None:
                continue
            name = path.relative_to(plan.results_dir).as_posix()
            found.append((name, data, stale))
    return [(data, stale) for name, data, stale in found if name not in relabelled]


def _unlike_today(plan: BenchPlan, result: dict[str, Any]) -> tuple[dict, dict]:
    """(recorded settings, those and the sizing entries that differ from today's); a
    result without recorded settings counts as made with today's, as the plan takes it."""
    m, method, task = plan.matrix, result["method"], result["task"]
    today = planned_settings(method, task, m.budget_rank)
    train_args = result.get("train_args")
    resolved = result.get("resolved")
    recorded = settings(train_args, method, resolved) if isinstance(train_args, dict) else today
    unlike = {k: v for k, v in recorded.items() if today.get(k) != v}
    sizing, now = result.get("sizing") or {}, m.sizing[task].identity()
    unlike.update({k: sizing[k] for k in now if k in sizing and sizing[k] != now[k]})
    return recorded, unlike


def _listed(plan: BenchPlan, method: str) -> bool:
    """A report lists its own methods' runs; one that runs variants lists every variant's."""
    methods = plan.matrix.methods
    return method in methods or (is_variant(method) and any(map(is_variant, methods)))


def earlier_groups(plan: BenchPlan) -> list[Group]:
    """The groups of final results the plan's tables do not use, in task order, numbered."""
    shown = {r["id"] for r in plan.results(FINAL)}
    groups: list[Group] = []
    results = sorted(_final_results(plan), key=lambda found: found[0].get("timestamp") or "")
    for result, stale in results:
        if (result["id"] in shown and not stale) or not _listed(plan, result["method"]):
            continue
        try:
            recorded, unlike = _unlike_today(plan, result)
        except ValueError:  # a method or setting this version does not know
            continue
        key = (result["task"], result["method"], result["lr"], recorded, unlike, stale)
        group = next(
            (g for g in reversed(groups)
             if (g.task, g.method, g.lr, g.settings, g.unlike_today, g.stale) == key),
            None,
        )  # fmt: skip
        if group is None or result["seed"] in group.scores:  # a seed again: runs made anew
            group = Group(*key)
            groups.append(group)
        group.scores[result["seed"]] = result["score"] if result["status"] == "ok" else None
        group.stamps.append(result.get("timestamp") or "")
        group.ranks += result.get("ranks") or []
    tasks = plan.matrix.tasks
    groups.sort(key=lambda g: (tasks.index(g.task), g.method, g.lr, min(g.stamps)))
    for number, group in enumerate(groups, 1):
        group.number = number
    return groups


def _current_groups(plan: BenchPlan) -> list[Group]:
    """The cells of the report's tables, as groups (references for the earlier runs)."""
    cells: dict[tuple[str, str], Group] = {}
    for result in plan.results(FINAL):
        task, method = result["task"], result["method"]
        if (task, method) not in cells:
            now = planned_settings(method, task, plan.matrix.budget_rank)
            cells[task, method] = Group(task, method, result["lr"], now, {}, False)
        score = result["score"] if result["status"] == "ok" else None
        cells[task, method].scores[result["seed"]] = score
    return list(cells.values())


def reference(group: Group, candidates: list[Group]) -> Group | None:
    """The one group of the same task, rate and base method whose settings differ from
    ``group``'s exactly in some of the settings its variant changes (the base method's
    own runs first, if there are several); None when it is not a variant, or there is no
    such group, or no single one."""
    if not is_variant(group.method):
        return None
    changed = set(split_method(group.method)[1])
    found = []
    for other in candidates:
        same_run = (other.task, other.lr) == (group.task, group.lr)
        if not same_run or base_method(other.method) != base_method(group.method):
            continue
        keys = set(group.settings) | set(other.settings)
        differ = {k for k in keys if group.settings.get(k) != other.settings.get(k)}
        if differ and differ <= changed:
            found.append(other)
    if len(found) > 1:
        found = [other for other in found if not is_variant(other.method)]
    return found[0] if len(found) == 1 else None


def _paired(group: Group, other: Group) -> str:
    diffs = [v - other.finished[s] for s, v in group.finished.items() if s in other.finished]
    if not diffs:
        return "–"
    won, lost = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    tied = len(diffs) - won - lost
    where = f"#{other.number}" if other.number else f"`{other.method}` in the tables above"
    return f"{statistics.fmean(diffs):+.2f} ({won}–{lost}–{tied}) vs {where}"


def _ranks(group: Group) -> str:
    """Mean hard rank of attention and MLP layers, and the range of their block means."""
    if base_method(group.method) != OURS or not group.ranks:
        return "–"
    summary = summarize_ranks({group.task: group.ranks})
    parts = []
    for kind, label in (("attention", "attention"), ("mlp", "MLP")):
        if kind in summary["by_kind"]:
            depth = summary["by_depth"].get(kind, {}).values()
            spread = f" ({min(depth):.1f}–{max(depth):.1f} by block)" if depth else ""
            parts.append(f"{label} {summary['by_kind'][kind]:.2f}{spread}")
    return ", ".join(parts)


def _mean_std(scores: dict[int, float]) -> str:
    if not scores:
        return "–"
    std = f" ± {statistics.stdev(scores.values()):.2f}" if len(scores) > 1 else ""
    return f"{statistics.fmean(scores.values()):.2f}{std}"


def _row(group: Group, candidates: list[Group]) -> str:
    unlike = ", ".join(f"{k}={v}" for k, v in sorted(group.unlike_today.items())) or "none"
    seeds = " / ".join(
        f"{s}: {'diverged' if v is None else f'{v:.2f}'}" for s, v in sorted(group.scores.items())
    )
    other = reference(group, candidates)
    paired = _paired(group, other) if other else "–"
    cells = [
        str(group.number), group.task, f"`{group.method}`", format_lr(group.lr), unlike,
        "stale/" if group.stale else "results/", min(group.stamps)[:16].replace("T", " "),
        seeds, _mean_std(group.finished), _ranks(group), paired,
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def section(plan: BenchPlan) -> list[str]:
    """The report's section on the final runs its tables leave out; empty if there are none."""
    groups = earlier_groups(plan)
    if not groups:
        return []
    candidates = groups + _current_groups(plan)
    columns = ["#", "task", "method", "lr", "recorded with (unlike today)", "file in", "made",
               "score per seed", "mean ± std", "LR-LoRA rank", "paired"]  # fmt: skip
    return [
        "",
        "## Runs the tables above leave out",
        "",
        "Final runs of this matrix recorded with other settings than this version trains "
        "with (set aside in `stale/` when they went stale, or left in place) or at another "
        "learning rate than the tables use, grouped by task, method, rate and recorded "
        "settings. LR-LoRA rank: mean hard rank of the attention and the MLP layers over the "
        "seeds, and the range of its means per block. Paired: the mean difference, seed by "
        "seed, to the one group that differs from it only in the settings its variant "
        "changes, then the seeds won–lost–tied.",
        "",
        "| " + " | ".join(columns) + " |",
        "|---" * len(columns) + "|",
        *(_row(group, candidates) for group in groups),
    ]
