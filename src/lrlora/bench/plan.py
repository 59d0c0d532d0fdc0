"""The quality matrix as a list of runs, each with a stable id and one result file.

Two stages per (task, method):

1. ``tune``: one run per learning rate of the method's grid, seed ``tune_seed``, trained
   on the training split minus a validation slice and scored on that slice (never dev).
2. ``final``: the chosen learning rate (best validation score; ties go to the smaller
   rate; a run that diverged never wins unless all did), one run per seed, scored on dev.
   It is planned only once every tuning run of the pair has finished.

Run ids look like ``glue/sst2/lr-lora/r4/tune/lr1e-3/s0`` and ``glue/sst2/lr-lora/r4/lr1e-3/s0``;
the result of a run is ``<results_dir>/<id with "/" replaced by "__">.json``. A run is
finished when that file parses as a JSON object with the run's id and the fields the report
reads (:data:`RESULT_SHAPE`); anything else (no file, a half-written, edited or foreign file)
is pending and will be run again, the file kept aside. So is a stale result: one recorded
with another sizing of its task, or with other settings of its method than this version
would train it with (a changed default makes the old results stale).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..app.args import METHODS, TrainArgs
from ..app.runs import SHAPES
from ..config import PRUNE_ONLY, default_harden_at
from ..util import shape_mismatch
from .suites import Matrix, TaskSizing, base_method, is_variant
from .variants import split_method

TUNE, FINAL = "tune", "final"
LR_CHOICE_FILE = "lr_choice.json"
_TIE = 1e-9
RESULT_SHAPE = {
    **dict.fromkeys(("id", "method", "status"), str), "task?": str,
    "score": (float, None), "seed?": int, "lr?": float,
    "metrics": (None, {"adapter_params?": float, "wall_time_s?": float,
                       "metrics?": {str: (float, None)}}),
    "ranks?": (None, SHAPES["ranks.json"]["layers"]),
    "sizing?": dict, "train_args?": dict, "versions?": (dict, None),
    "machine?": (None, {"cpu_count": int}), "timestamp?": (str, None), "command?": (None, [str]),
}  # fmt: skip
"""What a result file holds that the plan and the report read."""


def format_lr(lr: float) -> str:
    """``1e-3``, ``5e-4``, ``2.5e-3``: short and stable, for ids and tables."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix."""

    label: str
    task: str
    method: str
    budget_rank: int
    lr: float
    seed: int
    stage: str

    @property
    def id(self) -> str:
        stage = "tune/" if self.stage == TUNE else ""
        lr = format_lr(self.lr)
        return (
            f"{self.label}/{self.task}/{self.method}/r{self.budget_rank}/{stage}lr{lr}/s{self.seed}"
        )

    @property
    def filename(self) -> str:
        return self.id.replace("/", "__") + ".json"


BENCH_PRECISION = "fp32"
"""Every method of a matrix trains in one precision, whatever the machine: ``lrlora train``'s
'auto' takes bf16 where the CPU has it, and results from machines with and without it
would not compare (every result before the setting was recorded is fp32). A variant may
set another (``lr-lora+precision=bf16``)."""
SHARED_SETTINGS = ("alpha", "dropout", "weight_decay", "warmup_ratio", "precision")
METHOD_SETTINGS = {
    method: tuple(
        f.name for f in dataclasses.fields(TrainArgs) if f.metadata.get("method") == method
    )
    for method in METHODS
}
"""The training settings a method's result depends on, besides the run's own lr, seed and
its task's sizing: the shared ones and the ``TrainArgs`` fields marked as the method's own
(LR-LoRA: r_max, rank_lr, init_rank, rebalance_every, ...; AdaLoRA: its orthogonality
penalty)."""
LEGACY_SETTINGS = {
    "scaling": "budget",
    "rebalance_every": 50,
    "rank_update": "optimizer",
    "harden_at": 1.0,
    "prune_scaling": "ceiling",
    "precision": "fp32",
}
"""What a result recorded before a setting was stored ran at, where that differs from today's
default (LR-LoRA's scaling was 'budget' until the ablations made 'max' the default, it
re-balanced every 50 steps until the GPU sweep, its rho was left to the optimizer before
the shared rank update existed, it hardened at the end before harden_at existed, and pruned
runs kept the ceiling's scaling before prune_scaling existed). A setting missing from an
older result otherwise counts as today's default."""


def settings(
    train_args: dict[str, Any], method: str, resolved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings of ``method`` (a method or variant name) in a result's ``train_args``;
    ``resolved`` (the result's) says what an ``auto`` precision trained in."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainArgs)}
    keys = SHARED_SETTINGS + METHOD_SETTINGS.get(base_method(method), ())
    found = {k: train_args.get(k, LEGACY_SETTINGS.get(k, defaults[k])) for k in keys}
    if "harden_at" in found and found["harden_at"] is None:  # the rank update's default
        found["harden_at"] = default_harden_at(found.get("rank_update"))
    if found.get("precision") == "auto" and (resolved or {}).get("precision"):
        found["precision"] = resolved["precision"]
    if found.get("rank_update") != "prune":
        found.update({key: None for key in PRUNE_ONLY if key in found})
    return found


def planned_settings(method: str, task: str, budget_rank: int) -> dict[str, Any]:
    """The settings this version trains ``method`` with on ``task``: the defaults (as
    resolved for the budget) and a variant's changes."""
    base, changes = split_method(method)
    changes.setdefault("budget_rank", budget_rank)
    changes.setdefault("precision", BENCH_PRECISION)
    args = TrainArgs(task=task, method=base, **changes)
    return settings(args.to_dict(), method)


def load_result(
    path: Path,
    run_id: str,
    sizing: TaskSizing | None = None,
    method_settings: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The finished result of ``run_id`` at ``path``, or None if it is missing, unreadable
    or stale: recorded with another ``sizing`` of its task or other ``method_settings``
    (each checked only when given)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if shape_mismatch(data, RESULT_SHAPE) or data["id"] != run_id:
        return None
    if data["status"] == "ok" and not _scored(data):
        return None
    if is_stale(data, sizing, method_settings):
        return None
    return data


def _scored(result: dict[str, Any]) -> bool:
    """A finished run has a score and metrics (a trained one, its task and adapter size)."""
    metrics, trained = result["metrics"], "seed" in result
    if result["score"] is None or metrics is None:
        return False
    return not trained or ("adapter_params" in metrics and "task" in result)


def is_stale(
    result: dict[str, Any],
    sizing: TaskSizing | None,
    method_settings: dict[str, Any] | None = None,
) -> bool:
    """A result recorded with other steps, batch, sequence length, rows or slice than
    ``sizing`` (a result without a recorded sizing is taken as current), or with other
    settings of its method than ``method_settings``."""
    recorded = result.get("sizing")
    if sizing is not None and isinstance(recorded, dict):
        current = sizing.identity()
        if any(recorded.get(key) != value for key, value in current.items()):
            return True
    train_args = result.get("train_args")
    if method_settings is None or not isinstance(train_args, dict):
        return False
    recorded = settings(train_args, result.get("method", ""), result.get("resolved"))
    return recorded != method_settings


def result_score(result: dict[str, Any]) -> float | None:
    """The run's score, or None if it did not finish training (diverged)."""
    return result.get("score") if result.get("status") == "ok" else None


@dataclass(frozen=True)
class LRChoice:
    """The tuning of one (task, method): each rate's validation score and the winner."""

    scores: dict[float, float | None]
    chosen: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": sorted(self.scores),
            "val_scores": {format_lr(lr): s for lr, s in sorted(self.scores.items())},
            "chosen": self.chosen,
            "rule": "best validation score; ties -> smaller lr; diverged runs lose",
        }


def choose_lr(scores: dict[float, float | None]) -> float:
    """The learning rate with the best score; ties (within 1e-9) go to the smaller rate and
    a diverged run (None) loses to any finished one."""
    if not scores:
        raise ValueError("no learning rates to choose from")
    finite = {lr: s for lr, s in scores.items() if s is not None}
    if not finite:
        return min(scores)
    best = max(finite.values())
    return min(lr for lr, s in finite.items() if s >= best - _TIE)


@dataclass
class BenchPlan:
    """Every run of a matrix and its status, read from the results directory."""

    matrix: Matrix
    results_dir: Path
    runs: list[RunSpec] = field(default_factory=list)
    """Tuning runs, then the final runs that can be planned yet."""
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Run id -> finished result."""
    choices: dict[tuple[str, str], LRChoice] = field(default_factory=dict)
    waiting: list[tuple[str, str]] = field(default_factory=list)
    """(task, method) pairs whose final runs wait for their tuning."""

    def path(self, spec: RunSpec) -> Path:
        return self.results_dir / spec.filename

    def pending(self, stage: str | None = None, task: str | None = None) -> list[RunSpec]:
        return [
            s
            for s in self.runs
            if s.id not in self.done and stage in (None, s.stage) and task in (None, s.task)
        ]

    def results(self, stage: str = FINAL) -> list[dict[str, Any]]:
        return [self.done[s.id] for s in self.runs if s.stage == stage and s.id in self.done]

    @property
    def n_waiting(self) -> int:
        """Final runs not planned yet (their learning rate is not chosen)."""
        return len(self.waiting) * len(self.matrix.seeds)


def tuning_runs(matrix: Matrix, task: str, method: str) -> list[RunSpec]:
    """The learning-rate tuning runs of a pair; none when the matrix does not tune."""
    if not matrix.tune_lr or method not in matrix.lr_grid:
        return []
    rank, seed = matrix.budget_rank, matrix.tune_seed
    grid = matrix.lr_grid[method]
    return [RunSpec(matrix.label, task, method, rank, lr, seed, TUNE) for lr in grid]


def final_runs(matrix: Matrix, task: str, method: str, lr: float) -> list[RunSpec]:
    rank = matrix.budget_rank
    return [RunSpec(matrix.label, task, method, rank, lr, s, FINAL) for s in matrix.seeds]


def build_plan(matrix: Matrix, results_dir: str | Path) -> BenchPlan:
    """The plan for ``matrix`` given the results already in ``results_dir``.

    A method without a grid of its own (an ablation variant such as ``lr-lora+init_rank=8``)
    uses the rate chosen for its base method on the same task (from the base's tuning
    results, whether or not the base is among the matrix's methods); its final runs wait
    for that choice.
    """
    plan = BenchPlan(matrix, Path(results_dir))
    for task in matrix.tasks:
        for method in sorted(matrix.methods, key=is_variant):  # bases first
            tune = tuning_runs(matrix, task, method)
            plan.runs += tune
            _mark_done(plan, tune)
            lr = _final_lr(plan, task, method, tune)
            if lr is None:
                plan.waiting.append((task, method))
                continue
            final = final_runs(matrix, task, method, lr)
            plan.runs += final
            _mark_done(plan, final)
    return plan


def _final_lr(plan: BenchPlan, task: str, method: str, tune: list[RunSpec]) -> float | None:
    """The rate of the final runs of (task, method), or None while it is not known yet."""
    matrix = plan.matrix
    if method not in matrix.lr_grid:
        base = base_method(method)
        if not matrix.tune_lr:
            return matrix.lr_grid[base][0]
        if (task, base) in plan.choices:
            return plan.choices[task, base].chosen
        sizing = matrix.sizing[task]
        base_runs = tuning_runs(matrix, task, base)
        base_settings = planned_settings(base, task, matrix.budget_rank)
        tuned = [load_result(plan.path(s), s.id, sizing, base_settings) for s in base_runs]
        if not tuned or None in tuned:
            return None
        return choose_lr({r["lr"]: result_score(r) for r in tuned if r is not None})
    if not matrix.tune_lr:
        return matrix.lr_grid[method][0]
    if not all(s.id in plan.done for s in tune):
        return None
    scores = {s.lr: result_score(plan.done[s.id]) for s in tune}
    plan.choices[task, method] = LRChoice(scores, choose_lr(scores))
    return plan.choices[task, method].chosen


def _mark_done(plan: BenchPlan, specs: list[RunSpec]) -> None:
    for spec in specs:
        sizing = plan.matrix.sizing[spec.task]
        current = planned_settings(spec.method, spec.task, spec.budget_rank)
        result = load_result(plan.path(spec), spec.id, sizing, current)
        if result is not None:
            plan.done[spec.id] = result


def zero_shot_id(matrix: Matrix, task: str) -> str:
    """Id of the no-adapter evaluation of ``task``: ``commonsense/commonsense/zero-shot``."""
    return f"{matrix.label}/{task}/zero-shot"


def zero_shot_path(results_dir: Path, matrix: Matrix, task: str) -> Path:
    return Path(results_dir) / (zero_shot_id(matrix, task).replace("/", "__") + ".json")


def choice_key(matrix: Matrix, task: str, method: str) -> str:
    """Key of a (task, method) in ``lr_choice.json``: ``glue/sst2/lora/r4``."""
    return f"{matrix.label}/{task}/{method}/r{matrix.budget_rank}"
