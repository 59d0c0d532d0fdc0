"""The bench's numbers and report from constructed result files: mean, std, the average
over complete tasks, wins and losses, RESULTS.md with partial results, and the figures."""

from __future__ import annotations

import dataclasses

import pytest
from fakes import ATTENTION_RANK, MLP_RANK, fill, rank_rows

from lrlora.bench import aggregate as agg
from lrlora.bench.plan import FINAL, build_plan
from lrlora.bench.results_md import render, write_report

FULL = {
    ("sst2", "lora"): [80.0, 84.0, 85.0],
    ("sst2", "lr-lora"): [81.0, 83.0, 85.0],  # per seed: win, loss, tie
    ("stsb", "lora"): [70.0, 71.0, 72.0],
    ("stsb", "lr-lora"): [73.0, 74.0, 75.0],
}


def table_of(matrix, tmp_path, scores, params=None):
    fill(tmp_path, matrix, scores, params)
    plan = build_plan(matrix, tmp_path)
    return plan, agg.cells(matrix, plan.results(FINAL))


def test_cells_hold_mean_sample_std_and_params(matrix, tmp_path):
    _, table = table_of(matrix, tmp_path, FULL, params={"lora": 1200, "lr-lora": 900})
    cell = table["sst2", "lora"]
    assert (cell.n, cell.complete) == (3, True)
    assert cell.mean == pytest.approx(83.0)
    assert cell.std == pytest.approx(((9 + 1 + 4) / 2) ** 0.5)  # n - 1 in the denominator
    assert table["sst2", "lr-lora"].mean_params == 900


def test_partial_and_diverged_cells(matrix, tmp_path):
    scores = {**FULL, ("sst2", "lora"): [80.0, None], ("stsb", "lr-lora"): [73.0]}
    _, table = table_of(matrix, tmp_path, scores)
    diverged, partial = table["sst2", "lora"], table["stsb", "lr-lora"]
    assert (diverged.n, diverged.diverged, diverged.complete, diverged.std) == (1, 1, False, None)
    assert (partial.n, partial.mean, partial.complete) == (1, 73.0, False)


def test_average_only_over_tasks_where_every_method_is_complete(matrix, tmp_path):
    _, table = table_of(matrix, tmp_path, {**FULL, ("stsb", "lora"): [70.0, 71.0]})
    assert agg.complete_tasks(matrix, table) == ["sst2"]
    assert agg.averages(matrix, table) == {"lora": 83.0, "lr-lora": 83.0}
    _, empty = table_of(matrix, tmp_path / "none", {})
    assert agg.averages(matrix, empty) == {"lora": None, "lr-lora": None}


def test_all_task_average_for_the_methods_complete_on_every_task(matrix, tmp_path):
    plan, table = table_of(matrix, tmp_path, {**FULL, ("stsb", "lora"): [70.0, 71.0]})
    assert agg.overall_averages(matrix, table) == {"lora": None, "lr-lora": 78.5}
    text = render(plan, figures={})
    assert "| method | sst2 | stsb | Average | All 2 tasks |" in text
    assert "| 83.00 | 78.50 |" in text  # lr-lora: sst2 only, then both tasks
    full, _ = table_of(matrix, tmp_path / "full", FULL)
    assert "All 2 tasks" not in render(full, figures={})  # the average covers them already


def test_scores_and_differences_per_seed(matrix, tmp_path):
    plan, _ = table_of(matrix, tmp_path, {**FULL, ("stsb", "lora"): [70.0, None]})
    text = render(plan, figures={})
    assert "| lora | 80.00 / 84.00 / 85.00 | 70.00 / – / – (1 diverged) |" in text
    assert "| lr-lora | 81.00 / 83.00 / 85.00 | 73.00 / 74.00 / 75.00 |" in text
    assert "| lora | +1.00 / -1.00 / +0.00 | +3.00 / – / – |" in text  # LR-LoRA minus LoRA
    one_seed = dataclasses.replace(matrix, seeds=(0,))
    assert "Scores per seed" not in render(build_plan(one_seed, tmp_path), figures={})


def test_wins_and_losses_per_task_and_per_seed(matrix, tmp_path):
    _, table = table_of(matrix, tmp_path, {**FULL, ("stsb", "lora"): [70.0]})
    sst2, stsb = agg.duels(matrix, table)
    assert (sst2.task, sst2.baseline, sst2.wins, sst2.losses, sst2.ties) == (
        "sst2",
        "lora",
        1,
        1,
        1,
    )
    assert sst2.diff == pytest.approx(0.0)
    assert (stsb.wins, stsb.losses, stsb.ties) == (1, 0, 0)  # paired over seed 0 only
    assert stsb.diff == pytest.approx(74.0 - 70.0)
    assert agg.duels(matrix.select(methods=["lora"]), table) == []


def test_rank_rows_pool_the_seeds_and_mean_rows_average_them(matrix, tmp_path):
    plan, _ = table_of(matrix, tmp_path, FULL)
    rows = agg.rank_rows(plan.results(FINAL))
    assert set(rows) == {"sst2", "stsb"} and len(rows["sst2"]) == 3 * len(rank_rows())
    mean = {r["name"]: r["hard_rank"] for r in agg.mean_rows(rows["sst2"])}
    assert mean["bert.encoder.layer.1.output.dense"] == round(MLP_RANK + 1 / 3, 1)
    assert mean["bert.encoder.layer.0.attention.self.query"] == ATTENTION_RANK


def test_report_renders_partial_results(matrix, tmp_path):
    fill(tmp_path, matrix.select(tasks=["sst2"]), {("sst2", "lora"): [80.0, 82.0]})
    text = render(build_plan(matrix, tmp_path), figures={})
    assert "4/8 tuning runs and 2/12 final runs finished; **14 runs pending**" in text
    assert "6 final runs wait for their learning rate" in text
    assert "| sst2 | lora | 1e-3: 1.00, 2e-3: 2.00 | 2e-3 |" in text
    assert "| stsb | lora | tuning pending | – |" in text
    assert "81.00 ± 1.41<br><sub>2/3 seeds · 1.0k params</sub>" in text
    assert "| lr-lora | – | – | – |" in text and "complete (none yet)" in text
    assert "No figures yet" in text and "No finished LR-LoRA final run yet" in text


def test_report_states_the_numbers_and_draws_the_figures(matrix, tmp_path):
    pytest.importorskip("matplotlib")
    fill(tmp_path / "results", matrix, FULL)
    path = write_report(build_plan(matrix, tmp_path / "results"), tmp_path / "docs", ["x"])
    text = path.read_text()
    assert path == tmp_path / "docs" / "RESULTS.md"
    names = ["score-vs-params", "rank-heatmap-sst2", "rank-heatmap-stsb", "rank-by-role-and-depth"]
    for name in names:
        figure = tmp_path / "docs" / "figures" / f"glue-test-r4-{name}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/glue-test-r4-{name}.png)" in text
    assert "| lr-lora | 83.00 ± 2.00" in text and "| 78.50 |" in text  # average of 83 and 74
    assert "| lora | +0.00 (1–1–1) | +3.00 (3–0–0) | 1–0 | 4–1–1 |" in text
    mlp = (10 * MLP_RANK + 2 * (MLP_RANK + 1)) / 12  # 3 seeds x 4 MLP layers; 2 of them +1
    assert f"attention layers kept a mean hard rank of {ATTENTION_RANK:.2f} and MLP layers " \
           f"{mlp:.2f}" in text  # fmt: skip
    assert "query 6.00, key 6.00, value 6.00, attention output 6.00, MLP in" in text
    assert "One MLP rank costs 2.5x an attention rank (160 vs 64 parameters)" in text
    assert "Generated by `x`" in text and "2 CPU cores" in text


def test_report_sets_the_budgets_side_by_side(matrix, tmp_path):
    pytest.importorskip("matplotlib")
    matrix = dataclasses.replace(matrix, budgets=(2, 4, 8))
    small = {("sst2", "lora"): [78.0, 80.0, 82.0], ("sst2", "lr-lora"): [81.0, 81.0, 81.0]}
    fill(tmp_path / "results", matrix, FULL, params={"lora": 1000, "lr-lora": 990})
    fill(tmp_path / "results", matrix.select(budget_rank=2), small, params={"lora": 500})
    budgets = {r: build_plan(matrix.select(budget_rank=r), tmp_path / "results") for r in (2, 4, 8)}
    path = write_report(build_plan(matrix, tmp_path / "results"), tmp_path / "docs", ["x"],
                        budgets=budgets)  # fmt: skip
    text = path.read_text()
    assert "## Across budgets" in text
    assert "| lora | 2 | 80.00 ± 2.00<br><sub>3/3 seeds · 0.5k params</sub> | – |" in text
    assert "| lora | 4 | 83.00 ± 2.65" in text and "| lora | 8 |" not in text  # r8: no runs
    assert "lora sst2 3.00" in text and "lr-lora sst2 2.00" in text  # 83 - 80, 83 - 81
    assert "| lora | 2 | +1.00 (2–1–0) | – |" in text
    assert "| lora | 4 | +0.00 (1–1–1) | +3.00 (3–0–0) |" in text
    figure = tmp_path / "docs" / "figures" / "glue-test-r4-score-vs-params.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_budget_alone_gets_no_budget_section(matrix, tmp_path):
    fill(tmp_path, matrix, FULL)
    budgets = {r: build_plan(matrix.select(budget_rank=r), tmp_path) for r in (2, 4)}
    assert "Across budgets" not in render(build_plan(matrix, tmp_path), {}, budgets=budgets)


def test_another_report_of_the_same_runs_draws_its_own_score_figure(matrix, tmp_path):
    pytest.importorskip("matplotlib")
    fill(tmp_path / "results", matrix, FULL)
    plan = build_plan(matrix, tmp_path / "results")
    write_report(plan, tmp_path / "docs")
    other = build_plan(dataclasses.replace(matrix, report_name="ABLATIONS"), tmp_path / "results")
    text = write_report(other, tmp_path / "docs").read_text()
    figures = tmp_path / "docs" / "figures"
    assert "(figures/glue-test-r4-ablations-score-vs-params.png)" in text
    assert (figures / "glue-test-r4-score-vs-params.png").exists()  # RESULTS.md's is kept
