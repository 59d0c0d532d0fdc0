"""The glue-long suite: its plan and sizing, the order its stages run in, the premise check
and its report, from constructed results (no training)."""

from __future__ import annotations

import json

import pytest
from fakes import fake_result, fill, rank_rows

from lrlora.bench.long_md import FAILS, HOLDS, PENDING, premise
from lrlora.bench.plan import FINAL, TUNE, RunSpec, build_plan
from lrlora.bench.quality import BenchArgs, format_plans, run_matrix, train_args
from lrlora.bench.suites import (
    GLUE_LONG_EPOCHS,
    GLUE_TRAIN_ROWS,
    SUITES,
    epoch_steps,
)

METHODS = ("lora", "adalora", "lr-lora", "hand")
TASKS = ("sst2", "mrpc", "rte", "stsb")


def long_args(tmp_path, **changes) -> BenchArgs:
    return BenchArgs(suite="glue-long", results_dir=str(tmp_path / "results"),
                     runs_dir=str(tmp_path / "runs"), docs_dir=str(tmp_path / "docs"),
                     **changes)  # fmt: skip


def test_stages_run_the_premise_first_and_rank_8_is_lora_alone(tmp_path):
    stages = [(m.budget_rank, m.methods) for _, m in long_args(tmp_path).matrices()]
    assert stages == [(1, ("lora",)), (8, ("lora",)), (2, METHODS), (1, METHODS[1:])]
    premise_only = long_args(tmp_path, premise=True).matrices()
    assert [(m.budget_rank, m.methods) for _, m in premise_only] == stages[:2]
    assert [m.budget_rank for _, m in long_args(tmp_path, budget_rank=1).matrices()] == [1, 1]
    hand = long_args(tmp_path, methods=["hand"]).matrices()
    assert [(m.budget_rank, m.methods) for _, m in hand] == [(2, ("hand",)), (1, ("hand",))]
    plans = long_args(tmp_path).budget_plans()
    assert {r: p.matrix.methods for r, p in plans.items()} == {1: METHODS, 2: METHODS,
                                                              8: ("lora",)}  # fmt: skip
    for _, matrix in long_args(tmp_path).matrices():
        assert matrix.tasks == TASKS and matrix.seeds == (0, 1, 2) and matrix.tune_lr


def test_flags_that_name_no_stage_are_refused(tmp_path):
    with pytest.raises(ValueError, match="budget ranks"):
        long_args(tmp_path, budget_rank=4)
    with pytest.raises(ValueError, match="none of"):
        long_args(tmp_path, methods=["adalora"], budget_rank=8)
    with pytest.raises(ValueError, match="premise"):
        BenchArgs(suite="glue", premise=True)
    with pytest.raises(ValueError, match="unknown method"):
        long_args(tmp_path, methods=["dora"])


def test_rows_match_the_data_files():
    from lrlora.app.tasks import load_split

    assert {t: len(load_split(t, "train")) for t in TASKS} == GLUE_TRAIN_ROWS


def test_steps_are_epochs_of_the_training_split_at_batch_32_for_every_method(tmp_path):
    assert epoch_steps(3668, 10, 32) == 1150 and epoch_steps(67_349, 1, 32) == 2105
    assert epoch_steps(100, 0.5, 32) == 2  # half a pass of 4 batches
    sizing = SUITES["glue-long"].full.sizing
    expected = {"sst2": 2105, "mrpc": 1150, "rte": 780, "stsb": 1800}
    assert {t: s.steps for t, s in sizing.items()} == expected
    assert {t: s.tune_steps for t, s in sizing.items()} == {t: n // 2 for t, n in expected.items()}
    assert GLUE_LONG_EPOCHS == {"sst2": 1, "mrpc": 10, "rte": 10, "stsb": 10}
    args = long_args(tmp_path)
    for _, matrix in args.matrices():
        plan = build_plan(matrix, args.results_path)
        for task, steps in expected.items():
            specs = [RunSpec(matrix.label, task, m, matrix.budget_rank, 1e-3, 0, FINAL)
                     for m in matrix.methods]  # fmt: skip
            finals = [train_args(spec, plan, args) for spec in specs]
            assert {(a.max_steps, a.batch_size, a.warmup_ratio) for a in finals} == {
                (steps, 32, 0.06)
            }
            tune = [train_args(spec, plan, args) for spec in plan.pending(TUNE, task)]
            assert {(a.max_steps, a.val_fraction > 0) for a in tune} == {(steps // 2, True)}


def test_dry_run_sums_the_stages(tmp_path):
    text = format_plans(long_args(tmp_path, tasks=["rte"], premise=True))
    assert "== premise: LoRA at budget rank 1" in text and "lora/r8/tune/lr5e-4/s0" in text
    assert text.endswith("In all: 12 to run, about 14.0 h of one process (7.0 h as two with "
                         "OMP_NUM_THREADS=1 and disjoint --tasks).")  # fmt: skip


class Trainer:
    """Stands in for training: val score = 1000 * lr, dev score 80 + seed."""

    def __init__(self):
        self.ran: list[str] = []

    def __call__(self, spec, plan):
        self.ran.append(spec.id)
        return fake_result(spec, 1000 * spec.lr if spec.stage == TUNE else 80.0 + spec.seed)


def test_a_task_runs_stage_by_stage_and_resumes(tmp_path):
    args, trainer = long_args(tmp_path, tasks=["rte"]), Trainer()
    assert run_matrix(args, trainer) == []
    cells = list(dict.fromkeys("/".join(i.split("/")[2:4]) for i in trainer.ran))
    assert cells == ["lora/r1", "lora/r8", *(f"{m}/r2" for m in METHODS),
                     *(f"{m}/r1" for m in METHODS[1:])]  # fmt: skip
    assert len(trainer.ran) == 9 * (3 + 3)
    report = (tmp_path / "docs" / "RESULTS-long.md").read_text()
    assert "| rte | 80.00 / 81.00 / 82.00 | 80.00 / 81.00 / 82.00 |" in report
    again = Trainer()
    assert run_matrix(args, again) == [] and again.ran == []


# -- the premise ---------------------------------------------------------------------------------
def records(task: str, budget: int, scores: list[float | None], method: str = "lora") -> list:
    return [{"task": task, "method": method, "budget_rank": budget, "seed": seed,
             "status": "ok" if score is not None else "diverged", "score": score}
            for seed, score in enumerate(scores)]  # fmt: skip


def check(results: list, tasks=("sst2",), seeds=(0, 1, 2)):
    return premise(results, tasks, seeds)


def test_premise_holds_only_above_the_seed_spread():
    low = records("sst2", 1, [80.0, 81.0, 82.0])  # range 2
    above = check(low + records("sst2", 8, [83.0, 83.5, 84.0]))  # gain 2.5 > 2
    assert above.tasks[0].verdict == HOLDS and above.tasks[0].gain == pytest.approx(2.5)
    within = check(low + records("sst2", 8, [80.0, 82.5, 83.0]))  # gain 0.83, spread 3
    assert within.tasks[0].verdict == FAILS and within.tasks[0].spread == pytest.approx(3.0)
    tie = check(low + records("sst2", 8, [82.0, 83.0, 84.0]))  # gain 2 = spread 2
    assert tie.tasks[0].verdict == FAILS
    lower = check(low + records("sst2", 8, [70.0, 70.0, 70.0]))
    assert lower.tasks[0].verdict == FAILS


def test_premise_waits_for_every_seed_and_other_runs_do_not_count():
    low = records("sst2", 1, [80.0, 81.0, 82.0])
    partial = check(low + records("sst2", 8, [90.0, 90.0]))
    assert partial.tasks[0].verdict == PENDING and partial.tasks[0].missing == 1
    others = records("sst2", 8, [99.0] * 3, method="lr-lora") + records("sst2", 2, [99.0] * 3)
    others += [{**r, "stage": TUNE} for r in records("sst2", 8, [99.0] * 3)]
    assert check(low + others).tasks[0].missing == 3
    diverged = check(low + records("sst2", 8, [90.0, None, 90.0]))  # counted, without a score
    assert diverged.tasks[0].verdict == HOLDS and diverged.tasks[0].spread == pytest.approx(2.0)
    all_diverged = check(low + records("sst2", 8, [None, None, None]))
    assert all_diverged.tasks[0].verdict == FAILS and all_diverged.tasks[0].gain is None


def test_premise_needs_all_tasks_but_one():
    def suite(high: dict[str, list]) -> str:
        results = [r for t in TASKS for r in records(t, 1, [80.0, 80.5, 81.0])]
        results += [r for t, scores in high.items() for r in records(t, 8, scores)]
        return premise(results, TASKS, (0, 1, 2)).verdict

    up, flat = [85.0, 85.0, 85.0], [80.0, 80.5, 81.0]
    assert suite(dict.fromkeys(TASKS, up)) == HOLDS
    assert suite({"sst2": up, "mrpc": up, "rte": up, "stsb": flat}) == HOLDS
    assert suite({"sst2": up, "mrpc": up, "rte": flat, "stsb": flat}) == FAILS
    assert suite({"sst2": up, "mrpc": up, "rte": flat}) == PENDING  # stsb can still decide
    assert suite({"sst2": up, "mrpc": flat}) == PENDING
    assert suite({}) == PENDING


# -- the report ----------------------------------------------------------------------------------
def test_the_report_says_when_nothing_has_run(tmp_path):
    text = long_args(tmp_path).write_report().read_text()
    assert "**Nothing has run yet**" in text and "**The premise is not decided yet**" in text
    assert "| mrpc | 3,668 | 10.0 | 1150 | 575 | 32 | 128 | 10% of train |" in text
    assert "No LR-LoRA final run has finished yet." in text


def hand_rows(seed: int) -> list[dict]:
    """Block 0 without an adapter, block 1 at rank 3 (attention) and 5 (MLP)."""
    rows = [row for row in rank_rows(seed) if row["depth"] == 1]
    return [{**row, "hard_rank": 5 if row["kind"] == "mlp" else 3} for row in rows]


def test_the_report_from_constructed_results(tmp_path):
    args = long_args(tmp_path)
    results = tmp_path / "results"
    low, high = [80.0, 80.5, 81.0], [85.0, 85.5, 86.0]
    for rank, plan in args.budget_plans().items():
        scores = {(t, m): (high if rank == 8 else low) for t in TASKS for m in plan.matrix.methods}
        scores.update({("rte", m): [50.0, 60.0, 55.0] for m in plan.matrix.methods})
        if rank != 8:
            scores[("sst2", "lr-lora")] = [81.0, 81.0, 79.0]
        fill(results, plan.matrix, scores)
    for path in results.glob("glue-long__*__hand__r1__lr2e-3__s*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "ranks": hand_rows(record["seed"])}))
    text = args.write_report().read_text()
    assert "**The premise holds**: of the 4 task(s) it holds on 3, fails on 1" in text  # rte
    assert "| rte | 50.00 / 60.00 / 55.00 | 50.00 / 60.00 / 55.00 | +0.00 | 10.00 | fails |" in text
    assert "| sst2 | 80.00 / 80.50 / 81.00 | 85.00 / 85.50 / 86.00 | +5.00 | 1.00 | holds |" in text
    assert "## Budget rank 8" in text and "| lora | 85.50 ± 0.50" in text
    assert "| lora | -0.17 (2–1–0) | +0.00 (0–0–3) | +0.00 (0–0–3) | +0.00 (0–0–3) | 0–1 |" in text
    assert "| 8 | lora | 2e-3<br><sub>0.50 / 1.00 / 2.00</sub> |" in text
    assert "Budget rank 1, LR-LoRA final runs finished: 12." in text
    assert "| lr-lora | attention | 6.00 | 6.00 |" in text
    assert "| hand | attention | 0.00 | 3.00 |" in text and "| hand | MLP | 0.00 | 5.00 |" in text
