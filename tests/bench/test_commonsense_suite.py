"""A matrix without a tuning stage and with the base model's zero-shot score (the
commonsense suite's shape): what runs, what a rerun skips, and the per-test-set table."""

from __future__ import annotations

import json

import pytest
from fakes import fake_result

from lrlora.bench.plan import FINAL, build_plan, zero_shot_path
from lrlora.bench.quality import BenchArgs, run_matrix
from lrlora.bench.results_md import render, write_report
from lrlora.bench.suites import SUITES, Matrix, Suite, TaskSizing

PARTS = ("boolq", "piqa")


def untuned_matrix() -> Matrix:
    sizing = {"commonsense": TaskSizing("commonsense", 4, 0, 2, 64, 0.0, eval_limit=2)}
    return Matrix("cs-test", sizing, ("lora", "lr-lora"), (0, 1), {"lora": (1e-3,),
                  "lr-lora": (2e-3,)}, report_name="CS", tune_lr=False, subscores=PARTS,
                  zero_shot=True)  # fmt: skip


@pytest.fixture
def cs_suite(monkeypatch):
    matrix = untuned_matrix()
    monkeypatch.setitem(SUITES, "cs-test", Suite("cs-test", matrix, matrix))
    return matrix


def scored(spec, plan):
    record = fake_result(spec, 60.0 + spec.seed)
    record["metrics"]["metrics"] = {"boolq": 50.0 + spec.seed, "piqa": 70.0 + spec.seed,
                                    "average": 60.0 + spec.seed}  # fmt: skip
    return record


class BaseScorer:
    def __init__(self):
        self.calls = 0

    def __call__(self, matrix, task):
        self.calls += 1
        scores = {"boolq": 40.0, "piqa": 50.0, "average": 45.0}
        return {"id": f"{matrix.label}/{task}/zero-shot", "status": "ok", "score": 45.0,
                "metrics": {"metrics": scores}, "method": "zero-shot"}  # fmt: skip


def test_no_tuning_stage_and_the_zero_shot_score_runs_once(cs_suite, tmp_path):
    args = BenchArgs(suite="cs-test", results_dir=str(tmp_path / "r"),
                     docs_dir=str(tmp_path / "docs"))  # fmt: skip
    ran, base = [], BaseScorer()
    assert (
        run_matrix(args, lambda spec, plan: ran.append(spec.id) or scored(spec, plan), base) == []
    )
    assert ran == ["cs-test/commonsense/lora/r4/lr1e-3/s0", "cs-test/commonsense/lora/r4/lr1e-3/s1",
                   "cs-test/commonsense/lr-lora/r4/lr2e-3/s0",
                   "cs-test/commonsense/lr-lora/r4/lr2e-3/s1"]  # fmt: skip
    assert base.calls == 1 and zero_shot_path(tmp_path / "r", cs_suite, "commonsense").is_file()
    ran.clear()
    assert run_matrix(args, lambda spec, plan: ran.append(spec.id), base) == []
    assert ran == [] and base.calls == 1  # a rerun skips both


def test_report_tables_each_test_set_with_the_zero_shot_row(cs_suite, tmp_path):
    results = tmp_path / "r"
    plan = build_plan(cs_suite, results)
    assert not plan.waiting and all(s.stage == FINAL for s in plan.runs) and not plan.choices
    for spec in plan.runs:
        (results / spec.filename).parent.mkdir(parents=True, exist_ok=True)
        (results / spec.filename).write_text(json.dumps(scored(spec, plan)))
    path = zero_shot_path(results, cs_suite, "commonsense")
    path.write_text(json.dumps(BaseScorer()(cs_suite, "commonsense")))
    text = write_report(build_plan(cs_suite, results), tmp_path / "docs").read_text()
    assert "Fixed, no tuning stage: lora 1e-3; lr-lora 2e-3." in text
    assert "| method | boolq | piqa | Average | params |" in text
    assert "| zero-shot | 40.00 | 50.00 | 45.00 | 0 |" in text
    assert "| lora | 50.50 | 70.50 | 60.50 | 1.0k |" in text  # mean of seeds 0 and 1


def test_an_untuned_matrix_needs_one_rate_per_method():
    with pytest.raises(ValueError, match="exactly one lr"):
        Matrix("x", {}, ("lora",), (0,), {"lora": (1e-3, 2e-3)}, tune_lr=False)


def test_the_commonsense_suite_scores_all_seven_test_sets():
    from lrlora.app.tasks.commonsense import COMMONSENSE_TASKS

    for matrix in (SUITES["commonsense"].full, SUITES["commonsense"].quick):
        assert matrix.subscores == COMMONSENSE_TASKS and matrix.zero_shot
        assert matrix.tasks == ("commonsense",) and not matrix.tune_lr


def test_another_suites_report_is_summarised_after_its_own(cs_suite, tmp_path):
    from fakes import fill, small_matrix

    results, docs = tmp_path / "r", tmp_path / "docs"
    glue = small_matrix()
    fill(results, glue, {("sst2", "lora"): [80.0]})
    cs_plan = build_plan(cs_suite, results)
    for spec in cs_plan.runs:
        (results / spec.filename).write_text(json.dumps(scored(spec, cs_plan)))
    write_report(build_plan(cs_suite, results), docs)  # draws the commonsense figures
    # a heat map of a variant that has no current results (a former default's, say)
    (docs / "figures" / "cs-test-r4-rank-heatmap-commonsense-rank_lr-0.3.png").write_bytes(b"")
    text = write_report(
        build_plan(glue, results), docs, companions={"Commonsense": build_plan(cs_suite, results)}
    ).read_text()
    summary = text.split("## Commonsense")[1]
    assert "[CS.md](CS.md)" in summary and "4 final runs finished" in summary
    assert "### Per test set" in summary and "| lr-lora | 50.50 | 70.50 | 60.50 |" in summary
    assert "### Where LR-LoRA put its rank" in summary
    assert "figures/cs-test-r4-rank-heatmap-commonsense.png" in summary
    assert "rank_lr-0.3" not in summary  # figures on disk are linked only for current runs


def test_an_untuned_variant_runs_at_its_base_rate(tmp_path):
    import dataclasses

    matrix = dataclasses.replace(
        untuned_matrix(), methods=("lora", "lr-lora", "lr-lora+rank_lr=0.3")
    )
    plan = build_plan(matrix, tmp_path)
    assert {s.lr for s in plan.runs if s.method == "lr-lora+rank_lr=0.3"} == {2e-3}
    text = render(plan, {})
    assert "Fixed, no tuning stage: lora 1e-3; lr-lora 2e-3; a variant (method+setting)" in text
