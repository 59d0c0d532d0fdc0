"""Figures of learned ranks: heatmaps, trajectories, score vs size, rank by role and depth.

Needs the ``plots`` extra (matplotlib). matplotlib and numpy are imported inside the
functions, so ``import lrlora.plots`` and :func:`summarize_ranks` work without them.
Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg backend at
save time: pyplot is never imported, so no global backend is switched (in a notebook,
``matplotlib.use("Agg")`` would close the user's open figures) and nothing leaks.

Every plotting function writes one PNG atomically (temp file in the same folder, then
``os.replace``) and returns its path. Inputs are the plain dicts of
:func:`lrlora.rank_report` (rank rows) and :func:`lrlora.hf.snapshot` (trajectory points).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..report import ROLE_ORDER, role_of
from ..util import atomic_file

KIND_ORDER = ("attention", "mlp", "other")
KIND_COLOURS = {"attention": "tab:blue", "mlp": "tab:orange", "other": "tab:gray"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_DPI = 150


# -- numbers (no matplotlib) -----------------------------------------------------------------
def _rank_in(order: tuple[str, ...]):
    """Sort key: position in ``order``, unknown values last."""
    return lambda value: order.index(value) if value in order else len(order)


def _means(rows: list[dict], key: str, sort_key=None) -> dict:
    """Mean hard rank of the rows grouped by ``row[key]``, groups sorted by ``sort_key``."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for row in rows:
        groups[row[key]].append(row["hard_rank"])
    return {k: sum(groups[k]) / len(groups[k]) for k in sorted(groups, key=sort_key)}


def summarize_ranks(rows_by_task: dict[str, list[dict]]) -> dict[str, dict]:
    """Mean hard rank over the rows of all tasks pooled (every layer of every task counts
    once): ``{"by_role": {role: mean}, "by_kind": {kind: mean},
    "by_depth": {kind: {depth: mean}}}``. Roles follow ``ROLE_ORDER``, kinds
    attention/mlp/other, depths ascend; rows with depth None are left out of by_depth."""
    rows = [row for task_rows in rows_by_task.values() for row in task_rows]
    by_depth = {}
    by_kind = _means(rows, "kind", _rank_in(KIND_ORDER))
    for kind in by_kind:
        placed = [r for r in rows if r["kind"] == kind and r["depth"] is not None]
        if placed:
            by_depth[kind] = _means(placed, "depth")
    return {
        "by_role": _means(rows, "role", _rank_in(ROLE_ORDER)),
        "by_kind": by_kind,
        "by_depth": by_depth,
    }


# -- shared plumbing -------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically: readers never see a partial file."""
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI)
    return Path(path)


def _require(items, what: str) -> None:
    if not items:
        raise ValueError(f"nothing to plot: {what} is empty")


# -- 1. heatmap ------------------------------------------------------------------------------
def _heatmap_grid(rows: list[dict]) -> tuple[list[str], list[str], dict]:
    """Columns (roles present, in ROLE_ORDER), row labels (depths, then "-" for depth
    None) and the rows in each cell, ordered by module leaf name (gate_proj before up_proj)."""
    roles = [role for role in ROLE_ORDER if any(r["role"] == role for r in rows)]
    depths = sorted({r["depth"] for r in rows if r["depth"] is not None})
    labels = [str(d) for d in depths] + (["-"] if any(r["depth"] is None for r in rows) else [])
    y_of = {d: i for i, d in enumerate(depths)}
    cells: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["name"].rsplit(".", 1)[-1], r["name"])):
        cells[y_of.get(r["depth"], len(depths)), roles.index(r["role"])].append(r)
    return roles, labels, cells


def _column_labels(roles: list[str], cells: dict) -> list[str]:
    """The role, plus the module leaf names where a cell holds several layers."""
    labels = []
    for x, role in enumerate(roles):
        shared = [g for (_, cx), g in cells.items() if cx == x and len(g) > 1]
        leaves = dict.fromkeys(r["name"].rsplit(".", 1)[-1] for g in shared for r in g)
        labels.append(f"{role}\n({' / '.join(leaves)})" if leaves else role)
    return labels


def _mark_kinds(ax, roles: list[str], rows: list[dict]) -> None:
    """Kind names above the columns and a white rule between attention and MLP columns."""
    kind_of = {r["role"]: r["kind"] for r in rows}
    kinds = [kind_of[role] for role in roles]
    start = 0
    for x in range(1, len(roles) + 1):
        if x < len(roles) and kinds[x] == kinds[start]:
            continue
        ax.text((start + x - 1) / 2, 1.005, kinds[start], transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=9, fontweight="bold",
                color=KIND_COLOURS.get(kinds[start], "black"))  # fmt: skip
        if x < len(roles):
            ax.axvline(x - 0.5, color="white", linewidth=4)
        start = x


def rank_heatmap(rows: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Hard rank per layer: depth (y) x role (x), colour 0..R, each cell annotated with
    the hard rank and, smaller, rho. A cell that holds several layers of one role (Llama's
    gate_proj and up_proj are both ``mlp_in``) is coloured by their mean rank and lists
    each layer's rank and rho as ``a/b``, in the order named under the column label."""
    import matplotlib
    import numpy as np

    _require(rows, "rows")
    roles, labels, cells = _heatmap_grid(rows)
    r_max = max(r["r_max"] for r in rows)
    ranks = np.full((len(labels), len(roles)), np.nan)
    for (y, x), group in cells.items():
        ranks[y, x] = np.mean([r["hard_rank"] for r in group])
    fig = _figure(2.4 + 1.05 * len(roles), 1.8 + 0.3 * len(labels))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.9")
    image = ax.imshow(np.ma.masked_invalid(ranks), cmap=cmap, vmin=0, vmax=r_max, aspect="auto")
    for (y, x), group in cells.items():
        # Inside the axes, so left out of the layout: measuring hundreds of texts is slow.
        style = dict(ha="center", va="center", in_layout=False,
                     color="white" if ranks[y, x] < 0.55 * r_max else "black")  # fmt: skip
        rank_text = "/".join(str(r["hard_rank"]) for r in group)
        rho_text = "ρ " + "/".join(f"{r['rho']:.1f}" for r in group)
        ax.text(x, y - 0.12, rank_text, fontsize=8, fontweight="bold", **style)
        ax.text(x, y + 0.28, rho_text, fontsize=5.5, **style)
    ax.set_xticks(range(len(roles)), _column_labels(roles, cells), fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(np.arange(len(roles) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(labels) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="both", length=0)
    ax.set_xlabel("role")
    ax.set_ylabel("layer (block index; '-' = none)")
    _mark_kinds(ax, roles, rows)
    fig.colorbar(image, ax=ax, shrink=min(1.0, 6 / len(labels) + 0.3)).set_label(
        f"hard rank (0 to R = {r_max})"
    )
    ax.set_title(title or "Learned hard rank per layer", pad=18)
    return _save(fig, path)


# -- 2. trajectories -------------------------------------------------------------------------
def _plot_rho(ax, steps, trajectory: list[dict], rows: list[dict]) -> None:
    """A thin line per layer and a thick mean per kind, coloured by kind."""
    import numpy as np

    kind_of = {r["name"]: r["kind"] for r in rows}
    names = list(dict.fromkeys(n for point in trajectory for n in point["rho"]))
    alpha = 0.6 if len(names) <= 40 else 0.3
    by_kind: dict[str, list] = defaultdict(list)
    for name in names:
        kind = kind_of.get(name) or role_of(name)[1]
        series = np.array([p["rho"].get(name, np.nan) for p in trajectory], dtype=float)
        ax.plot(steps, series, color=KIND_COLOURS.get(kind, "black"), linewidth=0.7, alpha=alpha)
        by_kind[kind].append(series)
    for kind in sorted(by_kind, key=_rank_in(KIND_ORDER)):
        series = np.vstack(by_kind[kind])
        plural = "s" if len(series) != 1 else ""
        label = f"{kind}: mean of {len(series)} layer{plural} (thin: each layer)"
        ax.plot(steps, np.nanmean(series, axis=0), color=KIND_COLOURS.get(kind, "black"),
                linewidth=2.5, label=label)  # fmt: skip
    if rows:
        r_max = max(r["r_max"] for r in rows)
        ax.axhline(r_max, color="0.4", linestyle=":", label=f"R = {r_max} (rank ceiling)")
    ax.set_ylabel("rho (soft rank)")
    ax.set_title("soft rank of every adapted layer", fontsize=10)
    ax.legend(fontsize=8, loc="best")


def _plot_params(ax, steps, trajectory: list[dict]) -> None:
    from matplotlib.ticker import EngFormatter

    series = (
        ("allowance", "allowance (allowed soft size)", {"color": "tab:green"}),
        ("soft_params", "soft adapter size", {"color": "tab:blue"}),
        ("adapter_params", "hard adapter size (exported)", {"color": "tab:orange", "ls": "--"}),
    )
    for key, label, style in series:
        if all(key in p for p in trajectory):
            ax.plot(steps, [p[key] for p in trajectory], label=label, **style)
    budget = [p.get("budget_params") for p in trajectory]
    if any(b is not None for b in budget):
        ax.plot(steps, [math.nan if b is None else b for b in budget], color="black",
                linestyle=":", linewidth=1.5, label="budget")  # fmt: skip
    ax.yaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("adapter parameters")
    ax.legend(fontsize=8, loc="best")


def rank_trajectories(
    trajectory: list[dict], rows: list[dict], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Three panels over optimizer steps: rho of every layer (coloured by kind, from
    ``rows`` or else the module name), tau, and allowance vs soft / hard adapter size
    (plus the budget where the points carry one)."""
    _require(trajectory, "trajectory")
    steps = [p["step"] for p in trajectory]
    fig = _figure(9, 8.5)
    ax_rho, ax_tau, ax_params = fig.subplots(3, 1, sharex=True, height_ratios=(3, 1, 1.5))
    _plot_rho(ax_rho, steps, trajectory, rows)
    taus = [p.get("tau") for p in trajectory]
    if None in taus:  # a baseline's points (lrlora.methods): no gate, no temperature
        ax_tau.text(0.5, 0.5, "no gate temperature (not an LR-LoRA run)", ha="center",
                    va="center", transform=ax_tau.transAxes, color="0.4")  # fmt: skip
    else:
        ax_tau.plot(steps, taus, color="tab:purple")
        if min(taus) > 0 and max(taus) / min(taus) >= 10:
            ax_tau.set_yscale("log")
    ax_tau.set_ylabel("tau (gate temperature)")
    _plot_params(ax_params, steps, trajectory)
    ax_params.set_xlabel("optimizer step")
    for ax in (ax_rho, ax_tau, ax_params):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Rank trajectories")
    return _save(fig, path)


# -- 3. score vs parameters ------------------------------------------------------------------
_LABEL_CHARS = 32
"""Longest method name written beside its point in the score-vs-parameters panels."""


def _plot_task(ax, points: list[dict], styles: dict[str, tuple[str, str]]) -> None:
    """One task: a marker per method, error bars where given, the method name beside it."""
    from matplotlib.ticker import EngFormatter, MaxNLocator, NullFormatter

    for method, (colour, marker) in styles.items():
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["params"])
        if not mine:
            continue
        xs, ys = [p["params"] for p in mine], [p["score"] for p in mine]
        stds = [p.get("std") for p in mine]
        yerr = [s or 0.0 for s in stds] if any(s is not None for s in stds) else None
        line = "-" if len(mine) > 1 else "none"
        ax.errorbar(xs, ys, yerr=yerr, color=colour, marker=marker, markersize=7, capsize=3,
                    linewidth=0.8, linestyle=line, label=method)  # fmt: skip
        if len(method) <= _LABEL_CHARS:  # a longer name would squeeze the panel; see legend
            ax.annotate(method, (xs[-1], ys[-1]), xytext=(5, 4), textcoords="offset points",
                        fontsize=7, color=colour)  # fmt: skip
    params = [p["params"] for p in points]
    if min(params) > 0 and max(params) / min(params) >= 20:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # engineering labels are wide
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.margins(x=0.12, y=0.1)  # room for the method names
    ax.set_xlabel("adapter parameters")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)


def score_vs_params(points: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Score against adapter size: one panel per task; ``points`` are dicts with task,
    method, score, params and optionally std (drawn as error bars). A method keeps its
    colour and marker across panels; several points of one method are joined by a line."""
    import matplotlib

    _require(points, "points")
    tasks = list(dict.fromkeys(p["task"] for p in points))
    methods = list(dict.fromkeys(p["method"] for p in points))
    palette = matplotlib.colormaps["tab10"].colors
    styles = {m: (palette[i % 10], _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = _figure(1.5 + 4.2 * ncols, 0.8 + 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, task in zip(axes, tasks, strict=False):
        _plot_task(ax, [p for p in points if p["task"] == task], styles)
        ax.set_title(task, fontsize=10)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    by_label: dict[str, Any] = {}  # one legend for all panels, whichever panel has the method
    for ax in axes[: len(tasks)]:
        handles, labels = ax.get_legend_handles_labels()
        for label, handle in zip(labels, handles, strict=True):
            by_label.setdefault(label, handle)
    shown = [m for m in methods if m in by_label]
    fig.legend([by_label[m] for m in shown], shown, loc="outside lower center",
               ncols=min(len(shown), 6), fontsize=8)  # fmt: skip
    fig.suptitle(title or "Score vs adapter size")
    return _save(fig, path)


# -- 4. rank by role and depth ---------------------------------------------------------------
def _plot_by_role(ax, rows_by_task: dict[str, list[dict]], summary: dict) -> None:
    roles = list(summary["by_role"])
    groups = [(task, summarize_ranks({task: r})["by_role"]) for task, r in rows_by_task.items()]
    groups.append(("all tasks", summary["by_role"]))
    width = 0.8 / len(groups)
    for i, (task, means) in enumerate(groups):
        xs = [x + (i - (len(groups) - 1) / 2) * width for x in range(len(roles))]
        heights = [means.get(role, math.nan) for role in roles]
        if i < len(groups) - 1:
            ax.bar(xs, heights, width, label=task)
            continue
        bars = ax.bar(xs, heights, width, label=task, color="0.25", hatch="//", edgecolor="white")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(roles)), roles, fontsize=8)
    ax.set_xlabel("role")
    ax.set_ylabel("mean hard rank")
    ax.set_title("(a) mean hard rank by role", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _plot_by_depth(ax, rows_by_task: dict[str, list[dict]], summary: dict) -> None:
    from matplotlib.ticker import MaxNLocator

    for rows in rows_by_task.values():
        for kind, means in summarize_ranks({"": rows})["by_depth"].items():
            ax.plot(list(means), list(means.values()), color=KIND_COLOURS.get(kind, "black"),
                    linewidth=0.8, alpha=0.35)  # fmt: skip
    for kind, means in summary["by_depth"].items():
        label = f"{kind} (mean {summary['by_kind'][kind]:.2f}; thin: each task)"
        ax.plot(list(means), list(means.values()), color=KIND_COLOURS.get(kind, "black"),
                linewidth=2.5, marker="o", markersize=4, label=label)  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("mean hard rank")
    ax.set_title("(b) mean hard rank by depth, all tasks", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def rank_by_role_and_depth(
    rows_by_task: dict[str, list[dict]], path: str | os.PathLike, title: str | None = None
) -> tuple[Path, dict[str, dict]]:
    """Two panels: (a) mean hard rank per role, a bar per task and a hatched "all tasks"
    bar; (b) mean hard rank per depth for each kind, thick over all tasks, thin per task.
    Returns the path and :func:`summarize_ranks` of the same rows (the numbers drawn)."""
    _require([r for rows in rows_by_task.values() for r in rows], "rows_by_task")
    summary = summarize_ranks(rows_by_task)
    fig = _figure(13, 5)
    ax_role, ax_depth = fig.subplots(1, 2, width_ratios=(1.1, 1))
    _plot_by_role(ax_role, rows_by_task, summary)
    _plot_by_depth(ax_depth, rows_by_task, summary)
    fig.suptitle(title or "Where the rank went")
    return _save(fig, path), summary
