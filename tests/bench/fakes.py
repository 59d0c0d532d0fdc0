"""A small matrix and constructed result files for the bench tests (no training)."""

from __future__ import annotations

import json
from pathlib import Path

from lrlora.bench.plan import RunSpec, build_plan, final_runs, tuning_runs
from lrlora.bench.suites import Matrix, TaskSizing
from lrlora.report import depth_of, role_of

BERT_MODULES = ["attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"]  # fmt: skip
ATTENTION_RANK, MLP_RANK = 6, 2


def small_matrix(**changes) -> Matrix:
    sizing = {t: TaskSizing(t, 4, 2, 4, 32, 0.1, 24, 16) for t in ("sst2", "stsb")}
    grid = {"lora": (1e-3, 2e-3), "lr-lora": (1e-3, 2e-3)}
    settings = dict(label="glue-test", sizing=sizing, methods=("lora", "lr-lora"),
                    seeds=(0, 1, 2), lr_grid=grid)  # fmt: skip
    settings.update(changes)
    return Matrix(**settings)


def rank_rows(seed: int = 0, blocks: int = 2) -> list[dict]:
    """Rows as rank_report makes them: attention at rank 6, the MLP at rank 2 (block 1's
    MLP at 2 + seed % 2, so seeds differ)."""
    rows = []
    for block in range(blocks):
        for module in BERT_MODULES:
            name = f"bert.encoder.layer.{block}.{module}"
            role, kind = role_of(name)
            rank = ATTENTION_RANK if kind == "attention" else MLP_RANK + block * (seed % 2)
            cost = 64 if kind == "attention" else 160
            rows.append(dict(name=name, kind=kind, role=role, depth=depth_of(name), r_max=8,
                             rho=rank + 0.2, hard_rank=rank, params=rank * cost))  # fmt: skip
    return rows


def fake_result(spec: RunSpec, score: float | None, params: int = 1000) -> dict:
    """A result record with the keys the bench reads (score None = diverged)."""
    ok = score is not None
    return {
        "id": spec.id,
        "stage": spec.stage,
        "suite": spec.label,
        "task": spec.task,
        "method": spec.method,
        "seed": spec.seed,
        "lr": spec.lr,
        "budget_rank": spec.budget_rank,
        "status": "ok" if ok else "diverged",
        "score": score,
        "metrics": {"adapter_params": params} if ok else None,
        "ranks": rank_rows(spec.seed) if ok and spec.method == "lr-lora" else None,
        "machine": {"cpu_count": 2},
        "versions": {"torch": "2.13.0"},
        "command": ["lrlora", "bench"],
        "timestamp": f"2026-11-28T12:0{spec.seed}:00+00:00",
    }


def write(results_dir: Path, spec: RunSpec, score: float | None, params: int = 1000) -> Path:
    path = results_dir / spec.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fake_result(spec, score, params)))
    return path


def fill(results_dir: Path, matrix: Matrix, scores: dict, params: dict | None = None) -> None:
    """Tuning results (val score = 1000 * lr, so the largest lr wins), then final results
    from ``scores[(task, method)] = [score per seed]`` (shorter lists = partial)."""
    for task in matrix.tasks:
        for method in matrix.methods:
            for spec in tuning_runs(matrix, task, method):
                write(results_dir, spec, 1000 * spec.lr)
    plan = build_plan(matrix, results_dir)
    for (task, method), values in scores.items():
        lr = plan.choices[task, method].chosen
        specs = final_runs(matrix, task, method, lr)
        for spec, value in zip(specs, values, strict=False):
            write(results_dir, spec, value, (params or {}).get(method, 1000))
