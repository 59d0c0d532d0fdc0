"""``lrlora bench --suite planted``: the runs of the planted-rank proving ground (one
resumable result file each) and their report, docs/RESULTS-planted.md.

The problem itself (patterns, the planted teacher, the students, the metrics) is
:mod:`lrlora.bench.planted`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
import traceback
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from ..app.models import minilm_path
from ..app.plots import _figure, _save
from ..app.tasks.data import resolve_data_dir
from ..app.tasks.glue import parse_sst2
from ..config import PRUNE_ONLY, LRLoRAConfig
from ..util import shape_mismatch, versions, write_json_atomic, write_text_atomic
from .plan import LEGACY_SETTINGS
from .planted import (
    PATTERNS,
    RANK_METHODS,
    TARGETS,
    Pattern,
    PatternError,
    PlantedSetup,
    build_setup,
    layers,
    parse_pattern,
    train_student,
)
from .records import command_line, keep_aside, machine
from .variants import _convert

# -- the suite -----------------------------------------------------------------------------------
METHODS = ("lora", "oracle", "adalora", "lr-lora")


@dataclass(frozen=True)
class PlantedSizing:
    """How every run of the suite is sized; the same for every method (see module docs)."""

    steps: int = 300
    batch_size: int = 16
    max_length: int = 32
    scale: float = 0.15
    """Each planted delta's Frobenius norm, as a fraction of its weight's."""
    lr: float = 1e-2
    held_out: int = 256
    """SST-2 dev sentences the relative error is measured on (never trained on)."""
    r_max: int = 16
    """LR-LoRA's rank ceiling."""


FULL = PlantedSizing()
QUICK = PlantedSizing(steps=4, batch_size=4, max_length=16, held_out=8, r_max=4)


def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """(method, LRLoRAConfig overrides) of ``lr-lora+rank_lr=0.2+init_rank=16``."""

    method, *changes = name.split("+")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} in {name!r}; choose one of {METHODS}")
    if changes and method != "lr-lora":
        raise ValueError(f"{name!r}: only lr-lora takes +field=value changes here")
    hints = typing.get_type_hints(LRLoRAConfig)
    settings: dict[str, Any] = {}
    for change in changes:
        key, sep, text = change.partition("=")
        if not sep or key not in hints or key in ("target_modules", "budget_params"):
            raise ValueError(
                f"{change!r} in {name!r} is not field=value with an LRLoRAConfig field"
            )
        settings[key] = _convert(key, text, hints[key])
    return method, settings


def lr_lora_settings(overrides: Mapping[str, Any], sizing: PlantedSizing) -> dict[str, Any]:
    """The LRLoRAConfig fields an LR-LoRA run of the suite uses: the library's defaults,
    the sizing's ceiling, no dropout and the variant's changes. ``alpha`` is None unless
    the variant sets it: the student then takes ``lrlora train``'s, 2 x the budget rank.
    Recorded in the result, so that a changed default makes it stale."""
    changes = dict(overrides)
    alpha = changes.pop("alpha", None)
    fields = {"target_modules": list(TARGETS), "budget_params": 1, "r_max": sizing.r_max}
    settings = LRLoRAConfig(**{**fields, "dropout": 0.0, **changes}).to_dict()
    for key in ("target_modules", "budget_params", "budget_rank", "exclude_modules"):
        settings.pop(key)
    settings.pop("modules_to_save")
    settings["alpha"] = alpha
    return settings


def parse_task(text: str) -> tuple[str, Pattern]:
    """(label, rules) of a ``--tasks`` entry: a named pattern, a JSON file (labelled by its
    stem) or inline rules ``regex=rank,...`` (labelled ``custom-<hash>``)."""

    rules = parse_pattern(text)
    if text in PATTERNS:
        return text, rules
    if text.endswith(".json") or Path(text).is_file():
        label = Path(text).stem
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", label):
            raise PatternError(
                f"name the pattern file with letters, digits, '_', '.' or '-': {text!r}"
            )
        return label, rules
    return "custom-" + hashlib.sha1(json.dumps(rules).encode()).hexdigest()[:8], rules


@dataclass(frozen=True)
class PlantedRun:
    task: str
    rules: tuple[tuple[str, Any], ...]
    """The pattern's rules; a [rank, strength] value is held as a tuple (hashable)."""
    method: str
    seed: int

    @property
    def pattern(self) -> dict[str, Any]:
        """The rules as JSON holds them."""
        return {regex: list(v) if isinstance(v, tuple) else v for regex, v in self.rules}

    @property
    def id(self) -> str:
        return f"planted/{self.task}/{self.method}/s{self.seed}"

    @property
    def filename(self) -> str:
        return self.id.replace("/", "__") + ".json"


def plan_runs(tasks: list[str], methods: list[str], seeds: list[int]) -> list[PlantedRun]:
    """Every run, ordered so that runs sharing a teacher (pattern and seed) are adjacent."""
    for method in methods:
        split_variant(method)  # ValueError naming a bad method or field
    runs = []
    for text in tasks:
        label, rules = parse_task(text)
        held = tuple((r, tuple(v) if isinstance(v, list) else v) for r, v in rules.items())
        runs += [PlantedRun(label, held, m, s) for s in seeds for m in methods]
    return runs


def expected(run: PlantedRun, sizing: PlantedSizing) -> dict[str, Any]:
    """What a result of ``run`` must have been recorded with to count as finished."""
    method, overrides = split_variant(run.method)
    settings = lr_lora_settings(overrides, sizing) if method == "lr-lora" else None
    return {"sizing": dataclasses.asdict(sizing), "pattern": run.pattern, "settings": settings}


RESULT_SHAPE = {
    **dict.fromkeys(("id", "suite", "task", "method", "status"), str),
    "seed": int, "score": float, "planted": {str: int}, "pattern": dict,
    "sizing": {**dict.fromkeys(("steps", "batch_size", "max_length", "r_max"), int),
               **dict.fromkeys(("lr", "scale"), float)},
    "metrics": {"rel_error": float, "ranks?": {str: int}},
}  # fmt: skip
"""What a planted result holds that the plan and the report read (``rank_spearman`` may
also be NaN, which JSON shapes do not take: :func:`read_result` checks it)."""


def read_result(path: Path) -> dict[str, Any] | None:
    """The finished planted result at ``path``, or None if it is missing, unreadable, not
    finished or not shaped like one (edited, half-written or foreign: it counts as not run)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if shape_mismatch(data, RESULT_SHAPE) or data["status"] != "ok" or data["suite"] != "planted":
        return None
    ranks = data["metrics"].get("ranks")
    if ranks is not None and set(ranks) != set(data["planted"]):
        return None
    spearman = data["metrics"].get("rank_spearman")
    if spearman is not None and (isinstance(spearman, bool) or not isinstance(spearman, float)):
        return None
    return data


def same_settings(recorded: dict[str, Any] | None, today: dict[str, Any] | None) -> bool:
    """``recorded`` (a result's LR-LoRA settings) are ``today``'s, a setting missing from it
    counting as its legacy value (:data:`lrlora.bench.plan.LEGACY_SETTINGS`) or today's
    default, and settings only pruning reads ignored under another rank update."""
    if recorded is None or today is None:
        return recorded == today
    filled = {k: recorded.get(k, LEGACY_SETTINGS.get(k, v)) for k, v in today.items()}
    if today.get("rank_update") != "prune":
        filled.update({key: today.get(key) for key in PRUNE_ONLY})
    return filled == today and set(recorded) <= set(today)


def finished(path: Path, run: PlantedRun, sizing: PlantedSizing) -> dict[str, Any] | None:
    """The result at ``path`` if it is a finished run of ``run`` at ``sizing``; else None."""
    data = read_result(path)
    if data is None or data["id"] != run.id:
        return None
    want = expected(run, sizing)
    if not same_settings(data.get("settings"), want["settings"]):
        return None
    return data if all(data.get(k) == want[k] for k in ("sizing", "pattern")) else None


@dataclass
class Context:
    """The base model, tokenizer and sentences every run of a process shares."""

    base: nn.Module
    tokenizer: Any
    train_text: list[str]
    held_out_text: list[str]
    model_name: str


def load_context(model: str | None, data_dir: str | None, sizing: PlantedSizing) -> Context:
    """MiniLM (or ``model``) as a plain encoder, and SST-2 sentences from the data dir:
    training sentences from train.tsv, the held-out ones from dev.tsv."""
    from transformers import AutoModel, AutoTokenizer

    path = model or minilm_path()
    name = Path(path).name
    glue = resolve_data_dir(data_dir) / "glue" / "sst2"
    train = [e.text_a for e in parse_sst2(glue / "train.tsv")]
    held_out = [e.text_a for e in parse_sst2(glue / "dev.tsv")][: sizing.held_out]
    return Context(
        AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), train, held_out, name
    )


def run_one(run: PlantedRun, setup: PlantedSetup, sizing: PlantedSizing) -> dict[str, Any]:
    """Train one run on its (shared) setup; the result record."""

    method, overrides = split_variant(run.method)
    want = expected(run, sizing)
    began = time.perf_counter()
    metrics = train_student(setup, method, seed=run.seed, lr=sizing.lr, settings=want["settings"])
    return {
        "id": run.id,
        "suite": "planted",
        "task": run.task,
        "method": run.method,
        "seed": run.seed,
        "status": "ok",
        "score": metrics["rel_error"],
        "metrics": metrics,
        "planted": dict(setup.ranks),
        **want,
        "train_time_s": time.perf_counter() - began,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": machine(),
        "command": command_line(),
    }


def run_suite(
    runs: list[PlantedRun],
    results_dir: Path,
    sizing: PlantedSizing,
    context: Any,
    force: bool = False,
) -> list[str]:
    """Run every unfinished run (all with ``force``), one result file each, written
    atomically; a stale result is first moved to ``stale/``. ``context`` is a
    :class:`Context` or a callable returning one (loaded only if something runs).
    Returns the ids that failed."""

    todo = [r for r in runs if force or finished(results_dir / r.filename, r, sizing) is None]
    failed: list[str] = []
    setups: dict[tuple, PlantedSetup] = {}
    for i, run in enumerate(todo, start=1):
        print(f"\n[{i}/{len(todo)}] {run.id}", flush=True)
        context = context() if callable(context) else context
        key = (run.task, run.seed)
        if key not in setups:
            setups.clear()  # one teacher at a time
            setups[key] = build_setup(
                context.base, context.tokenizer, run.pattern,
                (context.train_text, context.held_out_text), seed=run.seed, steps=sizing.steps,
                batch_size=sizing.batch_size, max_length=sizing.max_length, scale=sizing.scale,
            )  # fmt: skip
        try:
            record = run_one(run, setups[key], sizing)
        except Exception:  # one broken run must not stop the suite
            traceback.print_exc()
            failed.append(run.id)
            continue
        path = results_dir / run.filename
        if path.exists():
            keep_aside(path)
        write_json_atomic(path, record)
        spearman_text = record["metrics"].get("rank_spearman")
        print(
            f"{run.id}: rel_error {record['score']:.4f}, rank spearman {spearman_text}", flush=True
        )
    return failed


# -- the report ----------------------------------------------------------------------------------
def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every finished planted result in ``results_dir`` (not in ``stale/``)."""
    found = (read_result(path) for path in sorted(Path(results_dir).glob("planted__*.json")))
    return [data for data in found if data is not None]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = (
        math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        if len(values) > 1
        else 0.0
    )
    return mean, std


def _cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({len(values)})"


def _by(results: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def _order(names: set[str], first: tuple[str, ...]) -> list[str]:
    return [n for n in first if n in names] + sorted(names - set(first))


def _is_uniform(result: dict) -> bool:
    return len(set(result["planted"].values())) == 1


def _paired(groups: dict, task: str, method: str, other: str) -> dict[int, float]:
    """seed -> score of ``method`` / score of ``other`` on the same teacher and batches."""
    theirs = {r["seed"]: r["score"] for r in groups.get((task, other), [])}
    return {r["seed"]: r["score"] / theirs[r["seed"]] for r in groups.get((task, method), [])
            if r["seed"] in theirs}  # fmt: skip


def target_rows(results: list[dict]) -> list[str]:
    """Per pattern and rank-choosing method (AdaLoRA, LR-LoRA and its variants): its error
    against the oracle's and LoRA's (paired by seed), its rank Spearman, and whether it
    meets the targets (non-uniform: <= 1.25x the oracle, <= 0.7x LoRA, Spearman >= 0.8;
    uniform: within 5% of LoRA)."""
    groups = _by(results, "task", "method")
    lines = ["| pattern | method | seeds | vs oracle | vs LoRA | rank Spearman | targets met |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    methods = [m for m in _order({r["method"] for r in results}, RANK_METHODS)
               if split_variant(m)[0] in RANK_METHODS]  # fmt: skip
    for task in _order({r["task"] for r in results}, tuple(PATTERNS)):
        for method in methods:
            ours = {r["seed"]: r for r in groups.get((task, method), [])}
            vs_oracle = _paired(groups, task, method, "oracle")
            vs_lora = _paired(groups, task, method, "lora")
            control = bool(ours) and _is_uniform(next(iter(ours.values())))
            # The control has no oracle run: LoRA's allocation is the planted one.
            seeds = sorted(set(ours) & set(vs_lora) & (set(ours) if control else set(vs_oracle)))
            if not seeds:
                continue
            spearman = [ours[s]["metrics"].get("rank_spearman", math.nan) for s in seeds]
            if control:
                met = all(vs_lora[s] <= 1.05 for s in seeds) and len(seeds) >= 3
            else:
                met = all(vs_oracle[s] <= 1.25 and vs_lora[s] <= 0.7 for s in seeds)
                met = met and all(r >= 0.8 for r in spearman) and len(seeds) >= 3
            lines.append(
                f"| {task} | {method} | {len(seeds)} | "
                f"{'–' if control else _cell([vs_oracle[s] for s in seeds], 2)} | "
                f"{_cell([vs_lora[s] for s in seeds], 2)} | "
                f"{'–' if control else _cell(spearman, 2)} | "
                f"{'yes' if met else 'no'} |"
            )
    return lines


def calibration_rows(results: list[dict]) -> list[str]:
    """Per pattern: does the oracle fit (<= 0.1) and is uniform LoRA held back by where its
    rank sits (>= 2x the oracle, paired by seed)? The control ``uniform`` needs neither."""
    groups = _by(results, "task", "method")
    lines = ["| pattern | seeds | oracle | LoRA / oracle | calibrated |", "|---|---|---|---|---|"]
    for task in _order({r["task"] for r in results}, tuple(PATTERNS)):
        oracle = [r["score"] for r in groups.get((task, "oracle"), [])]
        ratio = list(_paired(groups, task, "lora", "oracle").values())
        if not oracle or not ratio:
            continue
        uniform = _is_uniform(groups[task, "oracle"][0])
        ok = uniform or (max(oracle) <= 0.1 and min(ratio) >= 2.0)
        verdict = "control" if uniform else ("yes" if ok else "no")
        lines.append(f"| {task} | {len(ratio)} | {_cell(oracle)} | {_cell(ratio, 2)} | {verdict} |")
    return lines


def score_table(results: list[dict]) -> list[str]:
    methods = _order({r["method"] for r in results}, ("oracle", "lora", "adalora", "lr-lora"))
    tasks = _order({r["task"] for r in results}, tuple(PATTERNS))
    groups = _by(results, "task", "method")
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method in methods:
        cells = [_cell([r["score"] for r in groups.get((t, method), [])]) for t in tasks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def seed_rows(results: list[dict]) -> list[str]:
    """Every run's relative error by seed (and rank Spearman where the method chose ranks),
    one row per pattern and method: what the means above are made of."""
    seeds = sorted({r["seed"] for r in results})
    lines = ["| pattern | method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]  # fmt: skip
    tasks = _order({r["task"] for r in results}, tuple(PATTERNS))
    methods = _order({r["method"] for r in results}, ("oracle", "lora", "adalora", "lr-lora"))
    groups = _by(results, "task", "method")
    for task in tasks:
        for method in methods:
            runs = {r["seed"]: r for r in groups.get((task, method), [])}
            if not runs:
                continue
            cells = []
            for seed in seeds:
                run = runs.get(seed)
                spearman = run and run["metrics"].get("rank_spearman")
                cell = "–" if run is None else f"{run['score']:.3f}"
                if spearman is not None and spearman == spearman:  # a float, not NaN
                    cell += f" (Spearman {spearman:.2f})"
                cells.append(cell)
            lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
    return lines


SHORT_KINDS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn-out",
    "intermediate.dense": "mlp-in",
    "output.dense": "mlp-out",
}


def _grid(ranks: Mapping[str, float]) -> tuple[list[int], list[str], dict[tuple[int, str], float]]:
    cells = {}
    for (block, kind), name in zip(layers(ranks), ranks, strict=True):
        cells[block, kind] = ranks[name]
    blocks = sorted({b for b, _ in cells})
    kinds = _order({k for _, k in cells}, tuple(SHORT_KINDS))
    return blocks, kinds, cells


def rank_figure(task: str, results: list[dict], path: Path) -> Path:
    """Planted ranks beside the learned ones (mean over seeds) of each rank-choosing method."""
    import numpy as np

    planted = results[0]["planted"]
    panels = [("planted", planted)]
    for method in _order({r["method"] for r in results}, RANK_METHODS):
        runs = [r for r in results if r["method"] == method and "ranks" in r["metrics"]]
        if runs and split_variant(method)[0] in RANK_METHODS:
            mean = {n: sum(r["metrics"]["ranks"][n] for r in runs) / len(runs) for n in planted}
            panels.append((f"{method} ({len(runs)} seeds)", mean))
    blocks, kinds, _ = _grid(planted)
    top = max(max(p.values()) for _, p in panels) or 1
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig = _figure(1.2 + 2.9 * columns, 3.6 * rows)
    for i, (title, ranks) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        _, _, cells = _grid(ranks)
        grid = np.array([[cells.get((b, k), np.nan) for k in kinds] for b in blocks])
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for (y, x), value in np.ndenumerate(grid):
            ax.text(x, y, f"{value:.1f}".removesuffix(".0"), ha="center", va="center", fontsize=7,
                    color="white" if value < 0.55 * top else "black")  # fmt: skip
        short = [SHORT_KINDS.get(k, k) for k in kinds]
        ax.set_xticks(range(len(kinds)), short, rotation=45, ha="right", fontsize=7)
        first = i % columns == 0
        ax.set_yticks(range(len(blocks)), [str(b) for b in blocks] if first else [], fontsize=7)
        ax.set_title(title.replace("+", "\n+"), fontsize=7)
        if first:
            ax.set_ylabel("block")
    fig.suptitle(f"planted pattern '{task}': planted and learned hard ranks", fontsize=10)
    return _save(fig, path)


def recorded_as_named(result: dict[str, Any]) -> bool:
    """The result ran with the settings its method's name gives today: an LR-LoRA run
    recorded under former defaults (its name says only what it changed from them) is not."""
    method, overrides = split_variant(result["method"])
    if method != "lr-lora":
        return True
    try:
        today = lr_lora_settings(overrides, PlantedSizing(**result["sizing"]))
    except ValueError:  # its changes do not make a config under today's defaults
        return False
    return same_settings(result.get("settings"), today)


def _former_section(former: list[dict], baselines: list[dict]) -> list[str]:
    """The LR-LoRA runs recorded under former defaults, kept in the record."""
    if not former:
        return []
    return [
        "## Runs under former defaults", "",
        "LR-LoRA runs recorded under other defaults than today's (before `prune_scaling` "
        "existed, pruning kept the ceiling's scaling): each name lists what it changed from "
        "the defaults of its day, and its result file holds every setting. Against today's "
        "baselines.", "",
        *score_table(former), "",
        *target_rows(former + baselines), "",
        *seed_rows(former), "",
    ]  # fmt: skip


def write_report(results_dir: Path, docs_dir: Path, command: list[str]) -> Path:
    """docs/RESULTS-planted.md and one rank figure per pattern, from the result files."""
    results, former = [], []
    for result in load_results(results_dir):
        (results if recorded_as_named(result) else former).append(result)
    baselines = [r for r in results if r["method"] in ("lora", "oracle")]
    lines = [
        "# The planted-rank proving ground",
        "",
        "Generated by `lrlora bench --suite planted` from the result files in "
        f"`{results_dir}`; do not edit by hand. Method: `lrlora/bench/planted.py` (module "
        "docstring). Score: held-out relative error (student-teacher MSE over base-teacher "
        "MSE on SST-2 dev sentences never trained on; lower is better), mean ± std (seeds).",
        "",
    ]
    if results:
        sizing = results[0]["sizing"]
        lines += [
            f"Sizing: {sizing['steps']} steps of {sizing['batch_size']} sentences (up to "
            f"{sizing['max_length']} tokens), AdamW at {sizing['lr']:g} for every method (linear "
            f"warm-up over 10%, then linear decay), planted deltas of Frobenius norm "
            f"{sizing['scale']:g}x their weight's, LR-LoRA ceiling R = {sizing['r_max']}.",
            "",
            "## Relative error", "", *score_table(results), "",
            "## Calibration", "",
            "Allocation can only show where the oracle fits and uniform LoRA cannot: oracle "
            "<= 0.1 and LoRA >= 2x the oracle (paired by seed).", "",
            *calibration_rows(results), "",
            "## Rank-choosing methods against the targets", "",
            "Ratios are paired by seed (the same teacher and batches). Targets on every "
            "non-uniform pattern, 3 seeds: <= 1.25x the oracle, <= 0.7x LoRA, rank Spearman "
            ">= 0.8; on `uniform`, within 5% of LoRA.", "",
            *target_rows(results), "",
            "## Every run", "",
            *seed_rows(results), "",
            *_former_section(former, baselines),
            "## Planted and learned ranks", "",
        ]  # fmt: skip
        for (task,), group in sorted(_by(results, "task").items()):
            figure = rank_figure(task, group, docs_dir / "figures" / f"planted-{task}.png")
            lines += [f"![{task}](figures/{figure.name})", ""]
    else:
        lines += ["No results yet: run `lrlora bench --suite planted`.", ""]
    lines += ["Command: `" + " ".join(command) + "`", ""]
    path = docs_dir / "RESULTS-planted.md"
    write_text_atomic(path, "\n".join(lines))
    return path


STEP_S = 1.4
"""Seconds a training step of the full sizing takes with one thread (MiniLM, batch 16 of up
to 32 tokens, teacher forward included), for the dry run's estimate."""


def main(
    tasks: list[str] | None,
    methods: list[str] | None,
    seeds: list[int] | None,
    *,
    quick: bool,
    results_dir: Path,
    docs_dir: Path,
    data_dir: str | None = None,
    model: str | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    force: bool = False,
) -> int:
    """``lrlora bench --suite planted``: run what is unfinished, then write the report;
    exit status 1 if a run failed."""
    sizing = QUICK if quick else FULL
    runs = plan_runs(
        tasks or list(PATTERNS), methods or list(METHODS), seeds or ([0] if quick else [0, 1, 2])
    )
    if dry_run:
        pending = [r for r in runs if finished(results_dir / r.filename, r, sizing) is None]
        for run in runs:
            print(f"{'pending' if run in pending else 'done   '}  {run.id}")
        minutes = len(pending) * (sizing.steps * STEP_S + 30) / 60
        print(f"{len(pending)} to run, about {minutes:.0f} min of one process ({results_dir})")
        return 0
    failed = []
    if not report_only:
        failed = run_suite(
            runs, results_dir, sizing, lambda: load_context(model, data_dir, sizing), force
        )
    print(f"\nreport: {write_report(results_dir, docs_dir, command_line())}")
    if failed:
        print(f"{len(failed)} run(s) failed and stay pending: {', '.join(failed)}")
    return 1 if failed else 0
