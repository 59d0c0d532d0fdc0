"""Ablation variants (``lr-lora+field=value``): parsing, the rate they borrow from their base
method's tuning, the training arguments they change, and their section of the report."""

from __future__ import annotations

import pytest
from fakes import fill, small_matrix, write

from lrlora.bench.plan import FINAL, build_plan
from lrlora.bench.quality import BenchArgs, train_args
from lrlora.bench.results_md import render
from lrlora.bench.suites import ABLATION_VARIANTS, ATTENTION_ONLY_LORA, SUITES, Suite
from lrlora.bench.variants import split_method

VARIANT = "lr-lora+init_rank=8+fill_budget=false"


def test_a_variant_names_the_fields_it_changes():
    assert split_method("lora") == ("lora", {})
    assert split_method(VARIANT) == ("lr-lora", {"init_rank": 8.0, "fill_budget": False})
    assert split_method("lr-lora+scaling=sqrt+rebalance_every=0")[1] == {
        "scaling": "sqrt", "rebalance_every": 0}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("sora+rank_lr=1", "unknown method 'sora'"),
        ("lr-lora+rank", "not field=value"),
        ("lr-lora+colour=red", "not field=value"),
        ("lr-lora+scaling=cubic", r"scaling must be one of \['budget', 'max', 'sqrt'\]"),
        ("lr-lora+fill_budget=maybe", "fill_budget=true or fill_budget=false"),
        ("lr-lora+rank_lr=fast", "not a valid float"),
    ],
)
def test_a_bad_variant_says_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message):
        split_method(name)


def test_the_ablation_variants_parse():
    for name in ABLATION_VARIANTS:
        assert split_method(name)[0] == ("lora" if name == ATTENTION_ONLY_LORA else "lr-lora")


def test_a_variant_can_place_the_budget_on_other_layers(tmp_path):
    method, changes = split_method(ATTENTION_ONLY_LORA)
    targets = ["query", "key", "value", "attention.output.dense"]
    assert (method, changes) == ("lora", {"target_modules": targets, "budget_rank": 9})
    with pytest.raises(ValueError, match="target_modules=a,b,c"):
        split_method("lora+target_modules=,")
    matrix = small_matrix(methods=("lora", ATTENTION_ONLY_LORA))
    fill(tmp_path, matrix, {})
    plan = build_plan(matrix, tmp_path)
    spec = next(s for s in plan.runs if s.method == ATTENTION_ONLY_LORA)
    args = BenchArgs(results_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    targs = train_args(spec, plan, args)
    assert (targs.target_modules, targs.budget_rank, spec.budget_rank) == (targets, 9, 4)
    plain = train_args(next(s for s in plan.runs if s.method == "lora"), plan, args)
    assert (plain.target_modules, plain.budget_rank) == (None, 4)


def ablation_matrix(**changes):
    return small_matrix(methods=("lora", "lr-lora", VARIANT), **changes)


def test_a_variant_runs_at_its_base_methods_chosen_rate(tmp_path):
    matrix = ablation_matrix()
    plan = build_plan(matrix, tmp_path)
    assert (("sst2", VARIANT) in plan.waiting) and not any("+" in s.id for s in plan.runs)
    fill(tmp_path, matrix, {})  # val score = 1000 * lr: the larger rate, 2e-3, wins
    plan = build_plan(matrix, tmp_path)
    mine = [s for s in plan.runs if s.method == VARIANT]
    assert [(s.task, s.lr, s.seed, s.stage) for s in mine] == [
        (t, 2e-3, seed, FINAL) for t in ("sst2", "stsb") for seed in (0, 1, 2)]  # fmt: skip
    only_variant = matrix.select(methods=[VARIANT])  # the base's tuning is still found
    assert [s.id for s in build_plan(only_variant, tmp_path).runs] == [s.id for s in mine]
    args = BenchArgs(results_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    targs = train_args(mine[0], plan, args)
    assert (targs.method, targs.init_rank, targs.fill_budget, targs.lr) == (
        "lr-lora", 8.0, False, 2e-3)  # fmt: skip


def test_a_variant_without_a_tunable_base_is_refused():
    with pytest.raises(ValueError, match="grid for its base method 'dora'"):
        small_matrix(methods=("lora", "dora+dropout=0.1"))


def test_report_compares_each_variant_with_its_base_by_seed(tmp_path):
    matrix = ablation_matrix()
    fill(tmp_path, matrix, {("sst2", "lr-lora"): [80.0, 82.0, 84.0]})
    plan = build_plan(matrix, tmp_path)
    for spec, score in zip(
        [s for s in plan.runs if s.method == VARIANT], [81.0, 81.0], strict=False
    ):
        write(tmp_path, spec, score, params=900)
    text = render(build_plan(matrix, tmp_path), {})
    # seed 0: +1, seed 1: -1 -> mean 0.00, one win, one loss; seed 2 not paired yet
    assert f"| `{VARIANT}` | +0.00 (1–1–0, 0.9k) | – | +0.00 |" in text
    duels = text.split("## LR-LoRA against each baseline")[1].split("\n## ")[0]
    assert "| lora |" in duels and VARIANT not in duels  # variants have their own section


def test_the_ablation_suite_shares_the_glue_suites_runs(monkeypatch):
    glue, ablations = SUITES["glue"].full, SUITES["ablations"].full
    assert ablations.label == glue.label and ablations.sizing == glue.sizing
    assert ablations.seeds == glue.seeds and ablations.lr_grid["lr-lora"] == glue.lr_grid["lr-lora"]
    monkeypatch.setitem(SUITES, "abl", Suite("abl", ablation_matrix(), ablation_matrix()))
    narrowed = BenchArgs(suite="abl", tasks=["sst2"], methods=[VARIANT])
    assert narrowed.report_matrix().methods == ("lora", "lr-lora", VARIANT)
    assert narrowed.report_matrix().tasks == ("sst2", "stsb")


def test_an_lrlora_variant_gets_its_own_heat_map_and_rank_row(tmp_path):
    import json

    from fakes import rank_rows

    from lrlora.bench.results_md import write_report

    matrix = ablation_matrix()
    fill(tmp_path, matrix, {("sst2", "lr-lora"): [80.0]})
    spec = next(s for s in build_plan(matrix, tmp_path).runs if s.method == VARIANT)
    path = write(tmp_path, spec, 81.0)
    path.write_text(json.dumps({**json.loads(path.read_text()), "ranks": rank_rows(1)}))
    text = write_report(build_plan(matrix, tmp_path), tmp_path / "docs").read_text()
    heatmap = "sst2-init_rank-8-fill_budget-false.png"
    assert (tmp_path / "docs" / "figures" / f"glue-test-r4-rank-heatmap-{heatmap}").is_file()
    assert f"| {VARIANT} | sst2 | 6.00 |" in text and "| lr-lora | sst2 | 6.00 | 2.00 |" in text
