"""The generated report of a quality matrix: ``docs/RESULTS.md`` and ``docs/figures/``.

:func:`write_report` draws the figures from the final results it has and renders the
Markdown: how it was produced, the sizing, the learning-rate grid and choices, the
task x method table, LR-LoRA's wins and losses, the scores per seed, the figures, where
LR-LoRA's rank went (attention vs MLP, by role and by depth) in sentences with numbers,
and the final runs the tables leave out (:mod:`lrlora.bench.history`). Partial results
render: missing cells are "–" and the number of pending runs is stated.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ..app.plots import rank_by_role_and_depth, rank_heatmap, score_vs_params, summarize_ranks
from ..app.tasks import get_task
from ..util import write_text_atomic
from . import aggregate as agg
from . import history
from .plan import FINAL, TUNE, BenchPlan, format_lr, load_result, zero_shot_id, zero_shot_path
from .suites import Matrix, base_method, is_variant

ROLE_NAMES = {
    "query": "query",
    "key": "key",
    "value": "value",
    "qkv": "fused qkv",
    "attn_out": "attention output",
    "mlp_in": "MLP in",
    "mlp_out": "MLP out",
    "other": "other",
}
DASH = "–"


def _num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _params(value: float | None) -> str:
    return DASH if value is None else f"{value / 1000:.1f}k"


# -- figures ------------------------------------------------------------------------------------
def _points(table: dict) -> list[dict]:
    return [
        {"task": c.task, "method": c.method, "score": c.mean, "std": c.std, "params": c.mean_params}
        for c in table.values()
        if c.mean is not None
    ]


def make_figures(
    plan: BenchPlan, table: dict, figures_dir: Path, budgets: dict[int, dict] | None = None
) -> dict[str, Path]:
    """Score vs parameters (across ``budgets``, rank -> table, where more than one has
    results), one LR-LoRA rank heat map per task, mean rank by role and depth; each only
    when there are results to draw. Name -> path."""
    m = plan.matrix
    prefix = f"{m.label}-r{m.budget_rank}"
    made: dict[str, Path] = {}
    points = _points(table)
    title = f"{m.label}: score (mean ± std over seeds) vs adapter parameters"
    if budgets and len(budgets) > 1:
        points = [p for other in budgets.values() for p in _points(other)]
        points.sort(key=lambda p: m.tasks.index(p["task"]))  # panels in the matrix's order
        title += f", budget ranks {', '.join(map(str, budgets))}"
    if points:
        own = "" if m.report_name.startswith("RESULTS") else f"-{m.report_name.lower()}"
        path = figures_dir / f"{prefix}{own}-score-vs-params.png"  # differs between reports
        made["score vs adapter parameters"] = score_vs_params(points, path, title=title)
    rows_by_task = agg.rank_rows(plan.results(FINAL))
    for (task, variant), (path, rows) in heatmaps(plan, figures_dir).items():
        if variant is None:
            runs = len(rows) // len(agg.mean_rows(rows))
            title = f"{task}: LR-LoRA hard rank per layer (mean of {runs} seed(s))"
            name = f"learned ranks, {task}"
        else:
            title, name = (
                f"{task}: {variant} hard rank per layer",
                f"learned ranks, {task}, {variant}",
            )
        made[name] = rank_heatmap(agg.mean_rows(rows), path, title=title)
    if rows_by_task:
        path = figures_dir / f"{prefix}-rank-by-role-and-depth.png"
        title = "LR-LoRA: mean hard rank by role and by depth"
        made["rank by role and depth"] = rank_by_role_and_depth(rows_by_task, path, title)[0]
    return made


def heatmaps(plan: BenchPlan, figures_dir: Path) -> dict[tuple[str, str | None], tuple]:
    """(task, variant or None for LR-LoRA) -> (heat map path, rank rows) for every LR-LoRA
    method of the plan with finished final runs: the heat maps its report draws and links
    (figures of runs that are no longer current are not linked)."""
    m = plan.matrix
    prefix = f"{m.label}-r{m.budget_rank}"
    found: dict[tuple[str, str | None], tuple] = {}
    for task, rows in agg.rank_rows(plan.results(FINAL)).items():
        found[task, None] = (figures_dir / f"{prefix}-rank-heatmap-{task}.png", rows)
    for variant in _rank_variants(m):
        slug = variant.split("+", 1)[1].replace("=", "-").replace("+", "-")
        for task, rows in agg.rank_rows(plan.results(FINAL), method=variant).items():
            found[task, variant] = (figures_dir / f"{prefix}-rank-heatmap-{task}-{slug}.png", rows)
    return found


def _rank_variants(m: Matrix) -> list[str]:
    """The matrix's LR-LoRA variants (``lr-lora+...``): they get heat maps of their own."""
    return [v for v in m.methods if is_variant(v) and base_method(v) == agg.OURS]


def _table_section(title: str, intro: str, columns: list[str]) -> list[str]:
    """A ``##`` section: its title, an introductory paragraph, a table's header rows."""
    return ["", f"## {title}", "", intro, "", "| " + " | ".join(columns) + " |",
            "|---" * len(columns) + "|"]  # fmt: skip


# -- sections -----------------------------------------------------------------------------------
def _header(plan: BenchPlan, command: list[str] | None) -> list[str]:
    results = list(plan.done.values())
    cores = sorted({r["machine"]["cpu_count"] for r in results if r.get("machine")})
    if not cores:
        cores = [os.cpu_count()]
    versions = next((r["versions"] for r in reversed(results) if r.get("versions")), {})
    stamps = sorted(r["timestamp"] for r in results if r.get("timestamp"))
    runs_cmds = sorted({" ".join(r["command"]) for r in results if r.get("command")})
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Quality benchmark: {plan.matrix.label}, budget rank {plan.matrix.budget_rank}",
        "",
        f"Generated by `{' '.join(command or ['lrlora', 'bench', '--report-only'])}` on {now} "
        "from the result files in "
        f"`{plan.results_dir}` (one JSON per run; do not edit this file by hand).",
        "",
        f"- Machine: {', '.join(str(c) for c in cores)} CPU cores; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    if stamps:
        lines.append(
            f"- Runs made {stamps[0]} to {stamps[-1]} by: " + "; ".join(f"`{c}`" for c in runs_cmds)
        )
    return lines


def _status(plan: BenchPlan) -> list[str]:
    n_tune = sum(s.stage == TUNE for s in plan.runs)
    done_tune = sum(s.stage == TUNE and s.id in plan.done for s in plan.runs)
    n_final = sum(s.stage == FINAL for s in plan.runs) + plan.n_waiting
    done_final = len(plan.results(FINAL))
    pending = n_tune - done_tune + n_final - done_final
    text = (
        f"- Status: {done_tune}/{n_tune} tuning runs and {done_final}/{n_final} final runs finished"
    )
    if pending:
        text += f"; **{pending} runs pending** (the tables below are partial)"
        if plan.waiting:
            text += f", of which {plan.n_waiting} final runs wait for their learning rate"
    return [text + "."]


def _metric_names(tasks: tuple[str, ...]) -> str:
    names = []
    for task in tasks:
        try:
            names.append(f"{task}: {' and '.join(get_task(task).metrics)}")
        except ValueError:  # a task of another registry
            names.append(task)
    return "; ".join(names)


def _scored_on(m: Matrix) -> str:
    if m.subscores:
        return (
            f"the {len(m.subscores)} test sets ({', '.join(m.subscores)}; the same seeded subset "
            "of each for every run). Score = the unweighted mean of their accuracies, in percent."
        )
    return f"dev. Score = the mean of the task's metrics, in percent ({_metric_names(m.tasks)})."


def _setup(plan: BenchPlan) -> list[str]:
    m = plan.matrix
    lines = [
        "",
        "## Setup",
        "",
        f"Methods {', '.join(m.methods)} at the same budget: the adapter parameters of LoRA "
        f"at rank {m.budget_rank} on every attention and MLP linear layer (LR-LoRA's rank "
        f"ceiling R = {2 * m.budget_rank}; AdaLoRA's target rank {m.budget_rank}). Final runs "
        f"use seeds {', '.join(map(str, m.seeds))} and are scored on {_scored_on(m)} Within "
        "a task every method shares steps, batch, sequence length, training rows and schedule "
        "(AdamW, linear warm-up over 6% then linear decay).",
        "",
        "| task | steps (final) | steps (tuning) | batch | max tokens | training rows | "
        f"validation slice | eval rows{' per test set' if m.subscores else ''} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in m.sizing.values():
        rows = "all" if s.train_limit is None else f"{s.train_limit:,}"
        evals = "all" if s.eval_limit is None else str(s.eval_limit)
        lines.append(
            f"| {s.task} | {s.steps} | {s.tune_steps} | {s.batch_size} | {s.max_length} "
            f"| {rows} | {s.val_fraction:.0%} of train | {evals} |"
        )
    return lines


def _lr_section(plan: BenchPlan) -> list[str]:
    m = plan.matrix
    if not m.tune_lr:
        fixed = [k for k in m.methods if k in m.lr_grid]
        rates = "; ".join(f"{k} {format_lr(m.lr_grid[k][0])}" for k in fixed)
        if len(fixed) < len(m.methods):
            rates += "; a variant (method+setting) at its base method's rate"
        return ["", "## Learning rate", "", f"Fixed, no tuning stage: {rates}."]
    tuned = [k for k in m.methods if k in m.lr_grid]
    grids = "; ".join(f"{k} {', '.join(map(format_lr, m.lr_grid[k]))}" for k in tuned)
    if len(tuned) < len(m.methods):
        grids += ". A variant (method+setting) runs at its base method's chosen rate"
    lines = _table_section(
        "Learning rate",
        f"Picked per task and method on the validation slice (carved out of the training "
        f"split, never dev), seed {m.tune_seed}; ties go to the smaller rate. Grid: {grids}.",
        ["task", "method", "validation score per learning rate", "chosen"],
    )
    for task in m.tasks:
        for method in tuned:
            choice = plan.choices.get((task, method))
            if choice is None:
                lines.append(f"| {task} | {method} | tuning pending | {DASH} |")
                continue
            scores = ", ".join(
                f"{format_lr(lr)}: {_num(s)}" for lr, s in sorted(choice.scores.items())
            )
            lines.append(f"| {task} | {method} | {scores} | {format_lr(choice.chosen)} |")
    return lines


def cell_text(cell: agg.Cell) -> str:
    """Mean ± std, then the seeds finished and the parameters in small type."""
    if cell.mean is None:
        return DASH
    std = f" ± {cell.std:.2f}" if cell.std is not None else ""
    failed = f", {cell.diverged} diverged" if cell.diverged else ""
    return (
        f"{cell.mean:.2f}{std}<br><sub>{cell.n}/{cell.planned} seeds{failed} · "
        f"{_params(cell.mean_params)} params</sub>"
    )


def _score_table(plan: BenchPlan, table: dict) -> list[str]:
    m = plan.matrix
    complete = agg.complete_tasks(m, table)
    means = agg.averages(m, table)
    over = ", ".join(complete) if complete else "none yet"
    where = "the test sets" if m.subscores else "dev"
    intro = (
        f"Mean ± sample standard deviation over seeds of the score ({where}); under it the "
        "seeds finished and the final adapter parameters (mean over seeds; a task head, "
        f"trained by every method, is not counted). Average: over the tasks where every "
        f"method is complete ({over})."
    )
    overall = agg.overall_averages(m, table) if len(complete) < len(m.tasks) else {}
    every_task = any(v is not None for v in overall.values())  # a column of its own
    columns = ["method", *m.tasks, "Average"]
    if every_task:
        intro += f" All {len(m.tasks)} tasks: the average of each method complete on all of them."
        columns.append(f"All {len(m.tasks)} tasks")
    lines = _table_section("Results", intro, columns)
    for method in m.methods:
        cells = [cell_text(table[t, method]) for t in m.tasks] + [_num(means[method])]
        if every_task:
            cells.append(_num(overall[method]))
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return lines


def _seed_section(plan: BenchPlan, table: dict) -> list[str]:
    """Each cell's score per seed, and LR-LoRA minus each baseline seed by seed."""
    m = plan.matrix
    if len(m.seeds) < 2:
        return []
    seeds = " / ".join(map(str, m.seeds))
    lines = _table_section(
        "Scores per seed",
        f'The score of each final run, seeds {seeds} ("–": no score, the run is pending or '
        "diverged; diverged runs are counted in brackets).",
        ["method", *m.tasks],
    )
    for method in m.methods:
        cells = [_per_seed(m.seeds, table[t, method], lambda v: f"{v:.2f}") for t in m.tasks]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    baselines = [b for b in m.methods if b != agg.OURS and not is_variant(b)]
    if agg.OURS not in m.methods or not baselines:
        return lines
    header = f"| baseline | {' | '.join(m.tasks)} |"
    rule = "|---" * (len(m.tasks) + 1) + "|"
    lines += ["", f"LR-LoRA minus each baseline, seed by seed ({seeds}):", "", header, rule]
    for baseline in baselines:
        cells = []
        for task in m.tasks:
            ours, other = table[task, agg.OURS], table[task, baseline]
            paired = agg.Cell(task, baseline, len(m.seeds))
            paired.scores = {s: v - other.scores[s] for s, v in ours.scores.items()
                             if s in other.scores}  # fmt: skip
            cells.append(_per_seed(m.seeds, paired, lambda v: f"{v:+.2f}"))
        lines.append(f"| {baseline} | {' | '.join(cells)} |")
    return lines


def _per_seed(seeds: tuple[int, ...], cell: agg.Cell, text: Callable[[float], str]) -> str:
    if not cell.scores and not cell.diverged:
        return DASH
    found = [text(cell.scores[s]) if s in cell.scores else DASH for s in seeds]
    return " / ".join(found) + (f" ({cell.diverged} diverged)" if cell.diverged else "")


def duel_cell(duel: agg.Duel) -> str:
    """LR-LoRA's mean minus the baseline's, then the seeds won–lost–tied; "–" before both
    have a result."""
    if duel.diff is None:
        return DASH
    return f"{duel.diff:+.2f} ({duel.wins}–{duel.losses}–{duel.ties})"


def _duel_section(plan: BenchPlan, table: dict) -> list[str]:
    m = plan.matrix
    found = [d for d in agg.duels(m, table) if not is_variant(d.baseline)]  # variants: own section
    if not found:
        return []
    lines = _table_section(
        "LR-LoRA against each baseline",
        "Per task: LR-LoRA's mean minus the baseline's mean, and in brackets the per-seed "
        "paired count wins–losses–ties (same seed, same training rows).",
        ["baseline", *m.tasks, "tasks won–lost", "seeds won–lost–tied"],
    )
    sentences = []
    for baseline in dict.fromkeys(d.baseline for d in found):
        mine = [d for d in found if d.baseline == baseline]
        cells = list(map(duel_cell, mine))
        won = sum(d.diff is not None and d.diff > 0 for d in mine)
        lost = sum(d.diff is not None and d.diff < 0 for d in mine)
        compared = sum(d.diff is not None for d in mine)
        seeds = [sum(getattr(d, k) for d in mine) for k in ("wins", "losses", "ties")]
        lines.append(
            f"| {baseline} | {' | '.join(cells)} | {won}–{lost} | "
            f"{seeds[0]}–{seeds[1]}–{seeds[2]} |"
        )
        sentences.append(
            f"Against {baseline}, LR-LoRA's mean is higher on {won} and lower on "
            f"{lost} of the {compared} tasks compared so far; per seed it wins "
            f"{seeds[0]}, loses {seeds[1]} and ties {seeds[2]}."
        )
    return [*lines, "", " ".join(sentences)]


def _variant_section(plan: BenchPlan, table: dict) -> list[str]:
    """Each ablation variant against its base method, paired by seed."""
    m = plan.matrix
    variants = [v for v in m.methods if is_variant(v)]
    if not variants:
        return []
    lines = _table_section(
        "Each variant against its default",
        "Per task: the variant's score minus its base method's, averaged over the seeds both "
        "have (same seed = same initialisation and training rows), then in brackets the "
        "seeds won–lost–tied and the variant's mean adapter parameters. Average: over the "
        "tasks with a paired seed.",
        ["variant", *m.tasks, "Average"],
    )
    for variant in variants:
        base = base_method(variant)
        cells, diffs = [], []
        for task in m.tasks:
            mine, other = table[task, variant], table[task, base]
            paired = [mine.scores[s] - other.scores[s] for s in mine.scores if s in other.scores]
            if not paired:
                cells.append(DASH)
                continue
            diff = sum(paired) / len(paired)
            diffs.append(diff)
            counts = [sum(d > 0 for d in paired), sum(d < 0 for d in paired)]
            counts.append(len(paired) - sum(counts))
            cells.append(f"{diff:+.2f} ({'–'.join(map(str, counts))}, {_params(mine.mean_params)})")
        average = _num(sum(diffs) / len(diffs), sign=True) if diffs else DASH
        lines.append(f"| `{variant}` | {' | '.join(cells)} | {average} |")
    return lines


def budget_tables(budgets: dict[int, BenchPlan] | None) -> dict[int, dict]:
    """Budget rank -> table of cells, for the budgets with at least one final result."""
    tables = {}
    for rank, other in sorted((budgets or {}).items()):
        table = agg.cells(other.matrix, other.results(FINAL))
        if any(c.mean is not None for c in table.values()):
            tables[rank] = table
    return tables


def _budget_section(plan: BenchPlan, budgets: dict[int, BenchPlan] | None) -> list[str]:
    """Each method at every budget rank with results, and LR-LoRA against each baseline
    per budget: whether more rank helps at this sizing, and whether LR-LoRA's margin moves
    with the budget."""
    m, tables = plan.matrix, budget_tables(budgets)
    if len(tables) < 2:
        return []
    lines = _table_section(
        "Across budgets",
        "The same tasks, sizing, seeds and learning-rate grid at each budget rank "
        "(`lrlora bench --budget-rank R`, tuned per budget; reports RESULTS-rR.md): mean ± "
        "std over seeds, seeds finished and adapter parameters.",
        ["method", "budget rank", *m.tasks],
    )
    spreads = []
    for method in m.methods:
        means: dict[str, list[float]] = {t: [] for t in m.tasks}
        for rank, table in tables.items():
            cells = [table[t, method] for t in m.tasks]
            if all(c.mean is None for c in cells):
                continue
            lines.append(f"| {method} | {rank} | {' | '.join(map(cell_text, cells))} |")
            for c in cells:
                if c.mean is not None:
                    means[c.task].append(c.mean)
        spreads += [
            f"{method} {task} {max(found) - min(found):.2f}"
            for task, found in means.items()
            if len(found) > 1
        ]
    if spreads:
        lines += ["", "Spread of each method's mean across the budgets (largest minus "
                  "smallest): " + ", ".join(spreads) + "."]  # fmt: skip
    duel_rows = []
    for rank, table in tables.items():
        found = [d for d in agg.duels(budgets[rank].matrix, table) if not is_variant(d.baseline)]
        for baseline in dict.fromkeys(d.baseline for d in found):
            mine = [d for d in found if d.baseline == baseline]
            if all(d.diff is None for d in mine):
                continue
            cells = list(map(duel_cell, mine))
            duel_rows.append(f"| {baseline} | {rank} | {' | '.join(cells)} |")
    if duel_rows:
        lines += ["", "LR-LoRA's mean minus the baseline's at each budget (seeds "
                  "won–lost–tied):", "", f"| baseline | budget rank | {' | '.join(m.tasks)} |",
                  "|---" * (len(m.tasks) + 2) + "|", *duel_rows]  # fmt: skip
    return lines


def _subscore_section(plan: BenchPlan) -> list[str]:
    """Per-part accuracy (each commonsense test set) by method, mean over seeds, with the
    base model's zero-shot row."""
    m = plan.matrix
    if not m.subscores:
        return []
    lines = _table_section(
        "Per test set",
        "Accuracy in percent (mean over the seeds finished), the average over the test sets, "
        "and the adapter parameters. zero-shot: the base model, no adapter, same evaluation.",
        ["method", *m.subscores, "Average", "params"],
    )
    for task in m.tasks:
        base = load_result(zero_shot_path(plan.results_dir, m, task), zero_shot_id(m, task))
        rows = [("zero-shot", [base] if base else [])]
        results = [r for r in plan.results(FINAL) if r["task"] == task and r["status"] == "ok"]
        rows += [(method, [r for r in results if r["method"] == method]) for method in m.methods]
        for name, found in rows:
            scores = [r["metrics"]["metrics"] for r in found]
            cells = [_mean([s.get(k) for s in scores]) for k in (*m.subscores, "average")]
            params = _mean([r["metrics"].get("adapter_params") for r in found])
            size = "0" if name == "zero-shot" else _params(params)
            lines.append(f"| {name} | {' | '.join(_num(c) for c in cells)} | {size} |")
    return lines


def _mean(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def _figures_section(figures: dict[str, str]) -> list[str]:
    lines = ["", "## Figures", ""]
    if not figures:
        return [*lines, "No figures yet: no final run has finished."]
    return [*lines, *(f"![{name}]({path})" + "\n" for name, path in figures.items())]


def _series(means: dict, digits: int = 1) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in means.values())


def _rank_section(plan: BenchPlan) -> list[str]:
    lines = ["", "## Where LR-LoRA put its rank", ""]
    rows_by_task = agg.rank_rows(plan.results(FINAL))
    if not rows_by_task:
        return [*lines, "No finished LR-LoRA final run yet."]
    s = summarize_ranks(rows_by_task)
    kinds, roles = s["by_kind"], s["by_role"]
    n_runs = sum(r["method"] == agg.OURS and r["status"] == "ok" for r in plan.results(FINAL))
    attention, mlp = kinds.get("attention"), kinds.get("mlp")
    text = (
        f"Over {len(rows_by_task)} task(s) and {n_runs} LR-LoRA final run(s) (budget rank "
        f"{plan.matrix.budget_rank}, ceiling {2 * plan.matrix.budget_rank}), attention layers "
        f"kept a mean hard rank of {_num(attention)} and MLP layers {_num(mlp)}"
    )
    if attention is not None and mlp:
        text += f": attention kept {attention / mlp:.2f}x the rank of the MLP"
    text += ". By role: " + ", ".join(f"{ROLE_NAMES.get(k, k)} {v:.2f}" for k, v in roles.items())
    for kind, means in s["by_depth"].items():
        text += (
            f". {kind.capitalize() if kind != 'mlp' else 'MLP'} by depth (blocks "
            f"{min(means)}-{max(means)}): {_series(means)}"
        )
    cost, share = agg.cost_per_rank(rows_by_task), agg.params_by_kind(rows_by_task)
    if cost.get("attention") and cost.get("mlp"):
        text += (
            f". One MLP rank costs {cost['mlp'] / cost['attention']:.1f}x an attention rank "
            f"({cost['mlp']:,.0f} vs {cost['attention']:,.0f} parameters), and attention "
            f"layers hold {share.get('attention', 0):.0%} of LR-LoRA's adapter parameters"
        )
    lines += [text + ".", "", "| method | task | attention | MLP |", "|---|---|---|---|"]
    for method in (agg.OURS, *_rank_variants(plan.matrix)):
        for task, rows in agg.rank_rows(plan.results(FINAL), method=method).items():
            by_kind = summarize_ranks({task: rows})["by_kind"]
            attention, mlp = _num(by_kind.get("attention")), _num(by_kind.get("mlp"))
            lines.append(f"| {method} | {task} | {attention} | {mlp} |")
    return lines


def render(
    plan: BenchPlan,
    figures: dict[str, str],
    command: list[str] | None = None,
    budgets: dict[int, BenchPlan] | None = None,
) -> str:
    """The report's Markdown; ``figures`` maps a caption to a path relative to the report;
    ``budgets`` (rank -> plan) adds the comparison across budget ranks."""
    table = agg.cells(plan.matrix, plan.results(FINAL))
    sections = [
        _header(plan, command) + _status(plan),
        _setup(plan),
        _lr_section(plan),
        _score_table(plan, table),
        _duel_section(plan, table),
        _budget_section(plan, budgets),
        _variant_section(plan, table),
        _seed_section(plan, table),
        _subscore_section(plan),
        _figures_section(figures),
        _rank_section(plan),
        history.section(plan),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def _demote(lines: list[str]) -> list[str]:
    return ["#" + line if line.startswith("## ") else line for line in lines]


def companion_section(plan: BenchPlan, out_dir: Path, title: str) -> list[str]:
    """A summary of another suite's results (its per-part table, its rank heat maps and
    where its LR-LoRA put the rank) under one heading, linking its full report."""
    m = plan.matrix
    report = f"{m.report_name}.md"
    lines = ["", f"## {title}", "", f"Summary of [{report}]({report}), generated from the "
             f"same result files ({len(plan.results(FINAL))} final runs finished)."]  # fmt: skip
    if not plan.results(FINAL):
        return lines
    maps = [path for path, _ in heatmaps(plan, out_dir / "figures").values() if path.exists()]
    table = agg.cells(m, plan.results(FINAL))
    lines += _demote(_subscore_section(plan) or _score_table(plan, table))
    lines += _demote(_rank_section(plan))
    lines += ["", *(f"![{p.stem}](figures/{p.name})" for p in maps)]
    return lines


def write_report(
    plan: BenchPlan,
    out_dir: str | Path,
    command: list[str] | None = None,
    companions: dict[str, BenchPlan] | None = None,
    budgets: dict[int, BenchPlan] | None = None,
) -> Path:
    """Draw the figures into ``out_dir/figures`` and write ``out_dir/<report_name>.md``,
    with the comparison across ``budgets`` (rank -> plan of the matrix at that budget
    rank) and followed by a summary of each of ``companions`` (title -> plan of another
    suite)."""
    out_dir = Path(out_dir)
    table = agg.cells(plan.matrix, plan.results(FINAL))
    figures = make_figures(plan, table, out_dir / "figures", budget_tables(budgets))
    relative = {name: path.relative_to(out_dir).as_posix() for name, path in figures.items()}
    path = out_dir / f"{plan.matrix.report_name}.md"
    text = render(plan, relative, command, budgets)
    for title, other in (companions or {}).items():
        text += "\n".join(companion_section(other, out_dir, title)) + "\n"
    write_text_atomic(path, text)
    return path
