"""``lrlora bench``: the quality matrix (tasks x methods x seeds at one budget), resumable.

For each task in turn: run the pending learning-rate tuning runs, choose each method's
rate (:mod:`lrlora.bench.plan`), run the pending final runs, regenerate the report
(:mod:`lrlora.bench.results_md`). A suite of stages (glue-long) does this for each stage in
turn, each a matrix at its own budget rank, and writes its own report
(:mod:`lrlora.bench.long_md`). Every run is one :func:`lrlora.train.train` call and one
result JSON, written atomically once the run has finished; a rerun skips every run whose
result parses, so an interrupted matrix resumes where it stopped. A finished result is
never replaced unless ``--force``. Run directories go to ``benchmarks/runs/`` (not kept
in git; the result JSON holds everything the report needs).
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..app import runs
from ..app.lm_eval import load_test_items
from ..app.models import load_causal_lm
from ..app.tasks.causal import EVAL_SUBSET_SEED, evaluate
from ..app.tasks.data import resolve_data_dir
from ..app.train import METHODS, NonFiniteLossError, TrainArgs, train
from ..util import field_help, versions, write_json_atomic
from . import long_md, planted_suite
from .plan import (
    BENCH_PRECISION,
    FINAL,
    LR_CHOICE_FILE,
    TUNE,
    BenchPlan,
    RunSpec,
    build_plan,
    choice_key,
    is_stale,
    load_result,
    settings,
    zero_shot_id,
    zero_shot_path,
)
from .records import command_line, keep_aside, machine
from .results_md import write_report
from .suites import SUITES, Matrix, TaskSizing, get_suite
from .variants import split_method


@dataclass
class BenchArgs:
    """Everything ``lrlora bench`` depends on; the CLI flags are generated from it."""

    suite: str = field_help(
        "Benchmark suite ('glue-long': GLUE trained for epochs at budget ranks 1, 2 and 8, "
        "docs/RESULTS-long.md; 'planted': the planted-rank proving ground, "
        "docs/RESULTS-planted.md).",
        "glue",
        choices=(*SUITES, "planted"),
    )
    tasks: list[str] | None = field_help("Tasks to run. Default: all of the suite's.")
    methods: list[str] | None = field_help(
        f"Methods to run (of {', '.join(METHODS)}, or the suite's variants such as "
        "lr-lora+rebalance_every=50). Default: all of the suite's."
    )
    seeds: list[int] | None = field_help("Seeds of the final runs. Default: 0 1 2 (quick: 0).")
    budget_rank: int | None = field_help(
        "Budget rank shared by every method. Default: the suite's (glue: 4); glue-long runs "
        "its budget ranks 1, 2 and 8 in turn, or only this one."
    )
    premise: bool = field_help(
        "glue-long: run only the premise check's runs (LoRA at budget ranks 1 and 8).", False
    )
    quick: bool = field_help(
        "Tiny sizes (2 tasks, 1 seed, 1 learning rate, a dozen steps, 48 evaluation rows) "
        "into benchmarks/results-quick/; docs/ is left alone unless --docs-dir is given.",
        False,
    )
    results_dir: str | None = field_help(
        "Result JSON files. Default: benchmarks/results (quick: benchmarks/results-quick)."
    )
    runs_dir: str | None = field_help(
        "Run directories. Default: benchmarks/runs (quick: benchmarks/runs-quick)."
    )
    docs_dir: str | None = field_help(
        "Where the report and its figures go. Default: docs (quick: <results-dir>/report)."
    )
    data_dir: str | None = field_help(
        "Directory holding glue/. Default: $LRLORA_DATA or ../shared/data."
    )
    model: str | None = field_help("Model directory or hub name. Default: the offline MiniLM-L6.")
    dry_run: bool = field_help(
        "Print the plan (done / pending runs, time estimate) and stop.", False
    )
    report_only: bool = field_help(
        "Only regenerate the report and figures from existing results.", False
    )
    force: bool = field_help("Re-run finished runs and replace their results.", False)

    def __post_init__(self) -> None:
        if self.suite == "planted":  # ValueError naming a bad pattern or method
            planted_suite.plan_runs(self.tasks or [], self.methods or [], self.seeds or [0])
        else:
            self.matrices()  # ValueError naming the unknown suite, task, method or budget

    @property
    def base(self) -> Matrix:
        suite = get_suite(self.suite)
        return suite.quick if self.quick else suite.full

    def matrix(self) -> Matrix:
        """The suite's matrix narrowed by the flags (a suite of stages: at its own budget
        rank, every method; what runs is :meth:`matrices`)."""
        return self.base.select(self.tasks, self.methods, self.seeds, self.budget_rank)

    def matrices(self) -> list[tuple[str, Matrix]]:
        """What this invocation runs, in order, each with a title: the suite's matrix
        narrowed by the flags, or for a suite of stages each stage's (with --budget-rank
        those at that rank, with --premise those of the premise)."""
        suite = get_suite(self.suite)
        if not suite.stages:
            if self.premise:
                raise ValueError(f"--premise is for glue-long; {self.suite} has no premise check")
            return [(suite.name, self.matrix())]
        if self.budget_rank not in (None, *suite.budget_ranks):
            raise ValueError(
                f"{self.suite} runs budget ranks {list(suite.budget_ranks)}; "
                f"--budget-rank {self.budget_rank} is none of them"
            )
        self.base.select(self.tasks, self.methods)  # ValueError naming a task or method
        found = []
        for stage in suite.chosen_stages(self.budget_rank, self.premise):
            methods = [m for m in stage.methods if m in (self.methods or stage.methods)]
            if methods:
                matrix = self.base.select(self.tasks, methods, self.seeds, stage.budget_rank)
                found.append((stage.title, matrix))
        if not found:
            raise ValueError(f"{self.suite} runs none of {self.methods} at these budget ranks")
        return found

    def companions(self) -> dict[str, BenchPlan]:
        """Title -> plan of each suite the report summarises after its own."""
        found = {}
        for name in self.report_matrix().companions:
            suite = get_suite(name)
            matrix = suite.full.select(budget_rank=self.budget_rank)
            found[suite.description or name] = build_plan(matrix, self.results_path)
        return found

    def budget_plans(self) -> dict[int, BenchPlan]:
        """Budget rank -> plan of the report's matrix at that rank, for each of its
        ``budgets`` (empty if it names none); for a suite of stages, at each stage's budget
        rank with the methods its stages run there."""
        suite, results = get_suite(self.suite), self.results_path
        if suite.stages:
            return {r: build_plan(self.base.select(methods=list(suite.methods_at(r)),
                                                   budget_rank=r), results)
                    for r in suite.budget_ranks}  # fmt: skip
        m = self.report_matrix()
        return {r: build_plan(m.select(budget_rank=r), results) for r in m.budgets}

    def report_matrix(self) -> Matrix:
        """What the report covers: the whole suite at this budget rank, so that a process
        running a few tasks or methods does not shrink the report to them."""
        return self.base.select(budget_rank=self.budget_rank)

    def write_report(self) -> Path:
        """The suite's report from every result so far (whatever part of it ran)."""
        if get_suite(self.suite).stages:
            path = self.docs_path / f"{self.base.report_name}.md"
            return long_md.write_report(self.budget_plans(), path, command_line())
        plan = build_plan(self.report_matrix(), self.results_path)
        return write_report(
            plan, self.docs_path, command_line(), self.companions(), self.budget_plans()
        )

    def _default(self, given: str | None, full: str, quick: str) -> Path:
        return Path(given or (quick if self.quick else full))

    @property
    def results_path(self) -> Path:
        return self._default(self.results_dir, "benchmarks/results", "benchmarks/results-quick")

    @property
    def runs_path(self) -> Path:
        return self._default(self.runs_dir, "benchmarks/runs", "benchmarks/runs-quick")

    @property
    def docs_path(self) -> Path:
        return self._default(self.docs_dir, "docs", str(self.results_path / "report"))


# -- one run ------------------------------------------------------------------------------------
def train_args(spec: RunSpec, plan: BenchPlan, args: BenchArgs) -> TrainArgs:
    """The :class:`~lrlora.train.TrainArgs` of a run: the task's sizing, the run's lr and
    seed; tuning runs hold out the validation slice and are scored on it."""
    sizing, tune = plan.matrix.sizing[spec.task], spec.stage == TUNE
    method, changes = split_method(spec.method)
    changes.setdefault("budget_rank", spec.budget_rank)  # a variant may place it elsewhere
    return TrainArgs(
        task=spec.task,
        method=method,
        model=args.model,
        data_dir=args.data_dir,
        output_dir=str(args.runs_path / spec.filename[:-5]),
        overwrite=True,  # only unfinished runs get here: their directory is stale
        lr=spec.lr,
        seed=spec.seed,
        batch_size=sizing.batch_size,
        max_length=sizing.max_length,
        max_steps=sizing.tune_steps if tune else sizing.steps,
        train_limit=sizing.train_limit,
        eval_limit=sizing.eval_limit,
        val_fraction=sizing.val_fraction if tune else 0.0,
        **{"precision": BENCH_PRECISION, **changes},
    )


def result_record(
    spec: RunSpec, plan: BenchPlan, targs: TrainArgs, run: dict | None, error: str | None = None
) -> dict[str, Any]:
    """The result JSON of a run: its identity, settings, metrics, final ranks, provenance.
    ``run`` is the run directory's JSON files (None if training diverged)."""
    metrics = run["metrics.json"] if run else None
    choice = plan.choices.get((spec.task, spec.method)) if spec.stage == FINAL else None
    return {
        "id": spec.id,
        "stage": spec.stage,
        "suite": spec.label,
        "task": spec.task,
        "method": spec.method,
        "seed": spec.seed,
        "lr": spec.lr,
        "budget_rank": spec.budget_rank,
        "status": "ok" if run else "diverged",
        "score": metrics["metrics"]["score"] if metrics else None,
        "error": error,
        "metrics": metrics,
        "ranks": run["ranks.json"]["layers"] if run else None,
        "train_args": targs.to_dict(),
        "resolved": _portable(run["config.json"]["resolved"]) if run else None,
        "sizing": dataclasses.asdict(plan.matrix.sizing[spec.task]),
        "lr_choice": choice.to_dict() if choice else None,
        "versions": versions(),
        "machine": machine(),
        "command": command_line(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def train_run(spec: RunSpec, plan: BenchPlan, args: BenchArgs) -> dict[str, Any]:
    """Train one run and return its result record; a diverged run is a result too."""
    targs = train_args(spec, plan, args)
    try:
        train(targs)
    except NonFiniteLossError as err:
        return result_record(spec, plan, targs, None, error=str(err))
    return result_record(spec, plan, targs, runs.read_run(targs.run_dir))


def zero_shot_record(matrix: Matrix, task: str, args: BenchArgs) -> dict[str, Any]:
    """Score the model without any adapter on the test questions every run of ``task`` is
    scored on (the commonsense suite), as a result record."""
    began = time.perf_counter()
    sizing = matrix.sizing[task]
    model, tokenizer = load_causal_lm(args.model)
    items = load_test_items(
        resolve_data_dir(args.data_dir), matrix.subscores, sizing.eval_limit, EVAL_SUBSET_SEED
    )
    scores = evaluate(model, tokenizer, items, mode="score")
    return {
        "id": zero_shot_id(matrix, task),
        "stage": "zero-shot",
        "suite": matrix.label,
        "task": task,
        "method": "zero-shot",
        "status": "ok",
        "score": scores["score"],
        "metrics": {
            "metrics": scores,
            "eval_rows": len(items),
            "eval_split": "test",
            "wall_time_s": time.perf_counter() - began,
        },  # fmt: skip
        "model": args.model or "smollm2",
        "versions": versions(),
        "machine": machine(),
        "command": command_line(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class ResultExistsError(FileExistsError):
    """A finished result is in the way and ``force`` is off."""


def write_result(path: Path, record: dict[str, Any], force: bool) -> None:
    """Write a result atomically; a finished result is replaced only with ``force``. A stale
    one (another sizing of its task or other settings of its method than ``record``), or a
    file that is not a finished result of this run (half-written, edited, foreign), is first
    moved to ``<results dir>/stale/``, so that no file is ever lost."""
    existing = load_result(path, record["id"])
    if existing is not None:
        sizing = TaskSizing(**record["sizing"]) if "sizing" in record else None
        recorded = record.get("train_args")
        resolved = record.get("resolved")
        method = settings(recorded, record["method"], resolved) if recorded is not None else None
        if is_stale(existing, sizing, method):
            keep_aside(path)
            existing = None
    elif path.exists():
        keep_aside(path)
    if not force and existing is not None:
        raise ResultExistsError(f"{path} holds a finished result; pass --force to replace it.")
    write_json_atomic(path, record)


def _portable(resolved: dict[str, Any]) -> dict[str, Any]:
    """``resolved`` without this machine's paths: a model inside the environment is named
    relative to its site-packages, one in the model cache relative to it, and any other path
    under the working directory (the repository) relative to that, so committed results do
    not leak local directories."""
    out = dict(resolved)
    for key in ("model_path", "output_dir"):
        if isinstance(out.get(key), str):
            out[key] = runs.portable_path(out[key])
    return out


def write_lr_choices(plan: BenchPlan) -> Path:
    """Add the plan's learning-rate choices to ``lr_choice.json`` (other matrices' entries
    stay)."""
    path = plan.results_dir / LR_CHOICE_FILE
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        existing = None
    if not isinstance(existing, dict):  # missing, or not ours: kept aside, never overwritten
        if path.exists():
            keep_aside(path)
        existing = {}
    for (task, method), choice in plan.choices.items():
        existing[choice_key(plan.matrix, task, method)] = choice.to_dict()
    write_json_atomic(path, existing)
    return path


# -- the matrix ---------------------------------------------------------------------------------
Executor = Callable[[RunSpec, BenchPlan], dict[str, Any]]


def _run_all(specs: list[RunSpec], plan: BenchPlan, execute: Executor, force: bool) -> list[str]:
    """Run ``specs`` in order, writing each result; returns the ids that failed."""
    failed = []
    for i, spec in enumerate(specs, start=1):
        print(f"\n[{i}/{len(specs)}] {spec.id}", flush=True)
        began = time.perf_counter()
        try:
            record = execute(spec, plan)
            write_result(plan.path(spec), record, force)
        except Exception:  # one broken run must not stop a three-hour matrix
            traceback.print_exc()
            failed.append(spec.id)
            continue
        print(
            f"{spec.id}: {record['status']}, score {record['score']}, "
            f"{time.perf_counter() - began:.0f} s",
            flush=True,
        )
    return failed


def _zero_shot(matrix: Matrix, task: str, args: BenchArgs, score_base: Callable) -> int:
    """Score the base model of ``task`` once (a matrix with ``zero_shot``); 1 if it ran."""
    path = zero_shot_path(args.results_path, matrix, task)
    if not matrix.zero_shot or (load_result(path, zero_shot_id(matrix, task)) and not args.force):
        return 0
    print(f"\n[zero-shot] {zero_shot_id(matrix, task)}", flush=True)
    record = score_base(matrix, task)
    write_json_atomic(path, record)
    print(f"{record['id']}: score {record['score']:.2f}", flush=True)
    return 1


def run_matrix(
    args: BenchArgs, execute: Executor | None = None, score_base: Callable | None = None
) -> list[str]:
    """Run every pending run, matrix by matrix (stage by stage) and task by task (the base
    model's zero-shot score where the matrix asks for it, tuning, then final); the report is
    rewritten after each task that ran something. Returns the ids of runs that failed (they
    stay pending)."""
    execute = execute or (lambda spec, plan: train_run(spec, plan, args))
    score_base = score_base or (lambda m, task: zero_shot_record(m, task, args))
    failed: list[str] = []
    for _, matrix in args.matrices():
        for task in matrix.tasks:
            ran = _zero_shot(matrix, task, args, score_base)
            for stage in (TUNE, FINAL):
                plan = build_plan(matrix, args.results_path)
                if stage == FINAL and plan.choices:
                    write_lr_choices(plan)
                todo = plan.pending(stage, task)
                if args.force:
                    todo = [s for s in plan.runs if s.stage == stage and s.task == task]
                failed += _run_all(todo, plan, execute, args.force)
                ran += len(todo)
            if ran:
                args.write_report()
    return failed


def _estimate(plan: BenchPlan, spec: RunSpec) -> float:
    sizing = plan.matrix.sizing[spec.task]
    return sizing.run_seconds(sizing.tune_steps if spec.stage == TUNE else sizing.steps)


def seconds_left(plan: BenchPlan) -> float:
    """Estimated time of the runs still to make, those waiting for their rate included."""
    m = plan.matrix
    left = sum(_estimate(plan, s) for s in plan.pending())
    return left + sum(len(m.seeds) * m.sizing[t].run_seconds(m.sizing[t].steps)
                      for t, _ in plan.waiting)  # fmt: skip


def format_plan(plan: BenchPlan) -> str:
    """Every run with its status, task by task; the time still needed (estimated) and the
    time the finished runs took against their estimate."""
    lines, m = [], plan.matrix
    for task in m.tasks:
        lines += [
            f"{'done   ' if s.id in plan.done else 'pending'}  {s.id}"
            for s in plan.runs
            if s.task == task
        ]
        lines += [
            f"waiting  {m.label}/{task}/{method}: final runs after tuning"
            for t, method in plan.waiting
            if t == task
        ]
    left = seconds_left(plan)
    done = [s for s in plan.runs if s.id in plan.done]
    took = sum((plan.done[s.id].get("metrics") or {}).get("wall_time_s", 0) for s in done)
    lines.append(
        f"{len(done)} done in {took / 60:.0f} min (estimated "
        f"{sum(_estimate(plan, s) for s in done) / 60:.0f}); "
        f"{len(plan.pending()) + plan.n_waiting} to run, about {left / 60:.0f} min of one "
        f"process ({left / 120:.0f} min as two with OMP_NUM_THREADS=1 and disjoint --tasks); "
        f"results in {plan.results_dir}"
    )
    return "\n".join(lines)


def format_plans(args: BenchArgs) -> str:
    """:func:`format_plan` of each matrix this invocation runs, under its title when there
    are several, then the time left over all of them."""
    found = [(title, build_plan(matrix, args.results_path)) for title, matrix in args.matrices()]
    if len(found) == 1:
        return format_plan(found[0][1])
    parts = [f"== {title}\n{format_plan(plan)}" for title, plan in found]
    left = sum(seconds_left(plan) for _, plan in found)
    runs = sum(len(plan.pending()) + plan.n_waiting for _, plan in found)
    return "\n\n".join(parts) + (
        f"\n\nIn all: {runs} to run, about {left / 3600:.1f} h of one process "
        f"({left / 7200:.1f} h as two with OMP_NUM_THREADS=1 and disjoint --tasks)."
    )


def run_bench(args: BenchArgs) -> int:
    """``lrlora bench``: dry run, report only, or run the matrix and report; the exit
    status is 1 if any run failed."""
    if args.suite == "planted":
        return planted_suite.main(
            args.tasks, args.methods, args.seeds, quick=args.quick,
            results_dir=args.results_path, docs_dir=args.docs_path, data_dir=args.data_dir,
            model=args.model, dry_run=args.dry_run, report_only=args.report_only, force=args.force,
        )  # fmt: skip
    if args.dry_run:
        print(format_plans(args))
        return 0
    failed = [] if args.report_only else run_matrix(args)
    print(f"\nreport: {args.write_report()}")
    if failed:
        print(f"{len(failed)} run(s) failed and stay pending: {', '.join(failed)}")
    return 1 if failed else 0
