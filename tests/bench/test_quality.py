"""The bench's plan and resume logic: run ids, the two stages, the learning-rate choice,
which runs a rerun skips, and that a finished result is never overwritten without force."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from fakes import fake_result, fill, write

from lrlora.app.train import TrainArgs
from lrlora.bench.plan import (
    FINAL,
    LR_CHOICE_FILE,
    METHOD_SETTINGS,
    TUNE,
    RunSpec,
    build_plan,
    choose_lr,
    format_lr,
    planned_settings,
    settings,
    tuning_runs,
)
from lrlora.bench.quality import (
    BenchArgs,
    ResultExistsError,
    format_plan,
    run_bench,
    run_matrix,
    train_args,
    write_result,
)


def test_run_ids_and_result_files():
    tune = RunSpec("glue", "sst2", "lr-lora", 4, 1e-3, 0, TUNE)
    final = RunSpec("glue", "sst2", "lr-lora", 4, 5e-4, 2, FINAL)
    assert tune.id == "glue/sst2/lr-lora/r4/tune/lr1e-3/s0"
    assert final.id == "glue/sst2/lr-lora/r4/lr5e-4/s2"
    assert final.filename == "glue__sst2__lr-lora__r4__lr5e-4__s2.json"
    assert [format_lr(x) for x in (1e-3, 2e-3, 2.5e-4, 0.01)] == ["1e-3", "2e-3", "2.5e-4", "1e-2"]


def test_a_fresh_plan_holds_only_the_tuning_stage(matrix, tmp_path):
    plan = build_plan(matrix, tmp_path)
    assert {s.stage for s in plan.runs} == {TUNE}
    assert len(plan.runs) == 2 * 2 * 2  # tasks x methods x learning rates
    assert {s.seed for s in plan.runs} == {matrix.tune_seed}
    assert plan.waiting == [(t, m) for t in matrix.tasks for m in matrix.methods]
    assert plan.n_waiting == 4 * 3 and len(plan.pending()) == 8


def test_final_runs_appear_once_a_pairs_tuning_is_complete(matrix, tmp_path):
    lora, lrlora = tuning_runs(matrix, "sst2", "lora"), tuning_runs(matrix, "sst2", "lr-lora")
    write(tmp_path, lora[0], 80.0)
    write(tmp_path, lora[1], 82.0)
    write(tmp_path, lrlora[0], 81.0)  # one learning rate still missing
    plan = build_plan(matrix, tmp_path)
    final = [s for s in plan.runs if s.stage == FINAL]
    assert [s.id for s in final] == [f"glue-test/sst2/lora/r4/lr2e-3/s{i}" for i in range(3)]
    assert ("sst2", "lr-lora") in plan.waiting and ("sst2", "lora") not in plan.waiting
    assert plan.choices["sst2", "lora"].to_dict()["val_scores"] == {"1e-3": 80.0, "2e-3": 82.0}
    assert plan.pending(FINAL, "sst2") == final


@pytest.mark.parametrize(
    ("scores", "chosen"),
    [
        ({1e-3: 80.0, 2e-3: 82.0, 5e-4: 81.0}, 2e-3),
        ({1e-3: 82.0, 2e-3: 82.0, 5e-4: 81.0}, 1e-3),  # tie: the smaller rate
        ({1e-3: 82.0 + 1e-12, 5e-4: 82.0}, 5e-4),  # equal up to rounding is a tie
        ({1e-3: None, 2e-3: 70.0, 5e-4: 60.0}, 2e-3),  # diverged runs lose
        ({1e-3: None, 2e-3: None}, 1e-3),  # all diverged: the smallest rate
    ],
)
def test_learning_rate_choice(scores, chosen):
    assert choose_lr(scores) == chosen


def test_a_rerun_skips_finished_runs_and_reruns_broken_files(matrix, tmp_path):
    specs = build_plan(matrix, tmp_path).runs
    for spec in specs:
        write(tmp_path, spec, 80.0)
    (tmp_path / specs[0].filename).write_text('{"id": "glue-test/sst2/lo')  # half-written
    (tmp_path / specs[1].filename).write_text("")
    (tmp_path / specs[2].filename).write_text(json.dumps(fake_result(specs[3], 80.0)))  # foreign
    (tmp_path / specs[4].filename).unlink()
    write(tmp_path, specs[5], None)  # diverged: finished, with no score
    plan = build_plan(matrix, tmp_path)
    assert {s.id for s in plan.pending(TUNE)} == {specs[i].id for i in (0, 1, 2, 4)}
    assert plan.done[specs[5].id]["status"] == "diverged"


def test_finished_results_are_never_overwritten_without_force(matrix, tmp_path):
    spec = tuning_runs(matrix, "sst2", "lora")[0]
    path = tmp_path / spec.filename
    write_result(path, fake_result(spec, 80.0), force=False)
    with pytest.raises(ResultExistsError, match="--force"):
        write_result(path, fake_result(spec, 90.0), force=False)
    assert json.loads(path.read_text())["score"] == 80.0
    write_result(path, fake_result(spec, 90.0), force=True)
    assert json.loads(path.read_text())["score"] == 90.0
    path.write_text("{not json")  # an unfinished file is replaced without force
    write_result(path, fake_result(spec, 70.0), force=False)
    assert json.loads(path.read_text())["score"] == 70.0


def bench_args(tmp_path, **changes) -> BenchArgs:
    settings = dict(suite="test", results_dir=str(tmp_path / "results"),
                    runs_dir=str(tmp_path / "runs"), docs_dir=str(tmp_path / "docs"))  # fmt: skip
    return BenchArgs(**{**settings, **changes})


class FakeTrainer:
    """Stands in for training: records the ids it ran; val score = 1000 * lr."""

    def __init__(self, fail: str | None = None):
        self.ran: list[str] = []
        self.fail = fail

    def __call__(self, spec, plan):
        self.ran.append(spec.id)
        if spec.id == self.fail:
            raise RuntimeError("boom")
        score = 1000 * spec.lr if spec.stage == TUNE else 80.0 + spec.seed
        return fake_result(spec, score)


def test_run_matrix_tunes_then_runs_finals_and_resumes(test_suite, tmp_path):
    args = bench_args(tmp_path, tasks=["sst2"])
    trainer = FakeTrainer()
    assert run_matrix(args, trainer) == []
    assert [i.split("/")[4] for i in trainer.ran] == ["tune"] * 4 + ["lr2e-3"] * 6
    assert [i[-2:] for i in trainer.ran] == ["s0"] * 4 + ["s0", "s1", "s2"] * 2
    choices = json.loads((tmp_path / "results" / LR_CHOICE_FILE).read_text())
    assert choices["glue-test/sst2/lr-lora/r4"]["chosen"] == 2e-3
    assert (tmp_path / "docs" / "RESULTS.md").is_file()
    again = FakeTrainer()
    assert run_matrix(args, again) == [] and again.ran == []  # everything finished
    broken = tmp_path / "results" / "glue-test__sst2__lora__r4__lr2e-3__s1.json"
    broken.write_text(broken.read_text()[:40])
    assert run_matrix(args, again) == [] and again.ran == ["glue-test/sst2/lora/r4/lr2e-3/s1"]
    forced = FakeTrainer()
    assert run_matrix(bench_args(tmp_path, tasks=["sst2"], force=True), forced) == []
    assert len(forced.ran) == 10


def test_a_failed_run_stays_pending_and_the_rest_go_on(test_suite, tmp_path):
    failing = "glue-test/sst2/lora/r4/tune/lr1e-3/s0"
    trainer = FakeTrainer(fail=failing)
    assert run_matrix(bench_args(tmp_path, tasks=["sst2"]), trainer) == [failing]
    plan = build_plan(test_suite.select(tasks=["sst2"]), tmp_path / "results")
    assert [s.id for s in plan.pending()] == [failing]
    assert plan.waiting == [("sst2", "lora")] and len(plan.results(FINAL)) == 3


def test_dry_run_prints_the_plan_and_runs_nothing(test_suite, tmp_path, capsys):
    fill(tmp_path / "results", test_suite, {("sst2", "lora"): [80.0]})
    assert run_bench(bench_args(tmp_path, dry_run=True)) == 0
    out = capsys.readouterr().out
    assert "done     glue-test/sst2/lora/r4/lr2e-3/s0" in out
    assert "pending  glue-test/sst2/lora/r4/lr2e-3/s1" in out
    assert "9 done in 0 min (estimated 2); 11 to run" in out  # 8 tuning + 1 final done
    assert not (tmp_path / "docs").exists()
    assert format_plan(build_plan(test_suite, tmp_path / "empty")).endswith(
        "results in " + str(tmp_path / "empty")
    )


def test_train_args_hold_out_the_validation_slice_only_when_tuning(test_suite, tmp_path):
    args = bench_args(tmp_path, model="some/model", data_dir="data")
    fill(tmp_path / "results", test_suite, {})
    plan = build_plan(test_suite, tmp_path / "results")
    tune = train_args(plan.runs[0], plan, args)
    final = train_args(plan.pending(FINAL)[0], plan, args)
    assert (tune.val_fraction, tune.max_steps, tune.seed) == (0.1, 2, 0)
    assert (final.val_fraction, final.max_steps, final.lr) == (0.0, 4, 2e-3)
    assert (final.batch_size, final.max_length, final.train_limit) == (4, 32, 24)
    assert final.output_dir == str(tmp_path / "runs" / "glue-test__sst2__lora__r4__lr2e-3__s0")
    assert final.overwrite and (final.model, final.data_dir) == ("some/model", "data")


def test_bench_args_reject_unknown_tasks_and_suites():
    with pytest.raises(ValueError, match="unknown task"):
        BenchArgs(tasks=["mnli"])
    with pytest.raises(ValueError, match="unknown suite"):
        BenchArgs(suite="superglue")
    assert BenchArgs(quick=True).results_path.name == "results-quick"
    assert BenchArgs(budget_rank=8).matrix().report_name == "RESULTS-r8"


@pytest.mark.usefixtures("single_thread")
def test_bench_quick_end_to_end_and_resume(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    """`lrlora bench --quick` on a tiny BERT, one task, two methods: tuning on the
    validation slice, final runs on dev, result files, the report; a rerun runs nothing."""
    pytest.importorskip("peft")
    from lrlora.cli import main

    results = tmp_path / "results"
    argv = ["bench", "--quick", "--tasks", "sst2", "--methods", "lora", "lr-lora",
            "--model", tiny_bert_dir, "--results-dir", str(results),
            "--runs-dir", str(tmp_path / "runs"), "--docs-dir", str(tmp_path / "docs")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["lrlora", *argv])  # the command each result records
    assert main(argv) == 0
    matrix = BenchArgs(quick=True, tasks=["sst2"], methods=["lora", "lr-lora"]).matrix()
    expected = [LR_CHOICE_FILE, *(s.filename for s in build_plan(matrix, results).runs)]
    assert sorted(p.name for p in results.iterdir()) == sorted(expected)
    assert len(expected) == 1 + 2 * 2  # lr_choice.json, 1 tuning + 1 final run per method
    final = json.loads((results / "glue-quick__sst2__lr-lora__r4__lr1e-3__s0.json").read_text())
    tune = json.loads((results / "glue-quick__sst2__lora__r4__tune__lr1e-3__s0.json").read_text())
    assert (final["status"], final["metrics"]["eval_split"], tune["metrics"]["eval_split"]) == (
        "ok", "dev", "val")  # fmt: skip
    assert (final["train_args"]["max_steps"], tune["train_args"]["max_steps"]) == (12, 6)
    assert final["metrics"]["adapter_params"] <= final["metrics"]["budget_params"]
    assert final["lr_choice"]["chosen"] == 1e-3 and len(final["ranks"]) == 12
    assert {"torch", "transformers", "peft", "lrlora", "python"} <= set(final["versions"])
    assert final["command"][1:3] == ["bench", "--quick"]
    report = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "| lr-lora |" in report and "attention layers kept a mean hard rank" in report
    capsys.readouterr()
    assert main(argv) == 0
    assert "[1/" not in capsys.readouterr().out  # every run was skipped


def test_a_result_of_another_sizing_is_stale_and_kept_aside(matrix, tmp_path):
    spec = tuning_runs(matrix, "sst2", "lora")[0]
    record = fake_result(spec, 90.0)
    record["sizing"] = dataclasses.asdict(matrix.sizing["sst2"])
    path = tmp_path / spec.filename
    path.write_text(json.dumps(record))
    assert spec.id in build_plan(matrix, tmp_path).done
    estimate_only = {**record["sizing"], "step_s": 99.0}  # time estimates do not count
    path.write_text(json.dumps({**record, "sizing": estimate_only}))
    assert spec.id in build_plan(matrix, tmp_path).done
    other = {**record["sizing"], "steps": 8}  # another step count: run it again
    path.write_text(json.dumps({**record, "sizing": other, "timestamp": "T1:00"}))
    assert spec.id not in build_plan(matrix, tmp_path).done
    write_result(path, {**record, "score": 70.0}, force=False)
    assert json.loads(path.read_text())["score"] == 70.0
    (kept_path,) = (tmp_path / "stale").glob(f"{path.stem}.*.json")
    kept = json.loads(kept_path.read_text())
    assert kept["sizing"]["steps"] == 8 and kept["score"] == 90.0


def test_a_result_of_other_method_settings_is_stale_and_kept_aside(matrix, tmp_path):
    spec = tuning_runs(matrix, "sst2", "lr-lora")[0]
    current = TrainArgs(task="sst2", method="lr-lora", precision="fp32").to_dict()  # as run
    record = {**fake_result(spec, 90.0), "train_args": current}
    path = tmp_path / spec.filename
    path.write_text(json.dumps(record))
    assert spec.id in build_plan(matrix, tmp_path).done
    logging_only = {**current, "log_every": 1, "output_dir": "elsewhere"}  # not a setting
    path.write_text(json.dumps({**record, "train_args": logging_only}))
    assert spec.id in build_plan(matrix, tmp_path).done
    old_rank_lr = {**current, "rank_lr": current["rank_lr"] * 10}
    path.write_text(json.dumps({**record, "train_args": old_rank_lr}))
    assert spec.id not in build_plan(matrix, tmp_path).done
    # 'auto' counts as the precision it resolved to; bf16 is another setting than fp32.
    auto = {**record, "train_args": {**current, "precision": "auto"}}
    path.write_text(json.dumps({**auto, "resolved": {"precision": "fp32"}}))
    assert spec.id in build_plan(matrix, tmp_path).done
    path.write_text(json.dumps({**auto, "resolved": {"precision": "bf16"}}))
    assert spec.id not in build_plan(matrix, tmp_path).done
    # Recorded before 'scaling' was stored: it ran at the old default, 'budget'.
    before_scaling = {k: v for k, v in current.items() if k != "scaling"}
    path.write_text(json.dumps({**record, "train_args": before_scaling, "timestamp": "T2:00"}))
    assert current["scaling"] != "budget" and spec.id not in build_plan(matrix, tmp_path).done
    write_result(path, {**record, "score": 70.0}, force=False)
    assert json.loads(path.read_text())["score"] == 70.0
    (kept_path,) = (tmp_path / "stale").glob(f"{path.stem}.*.json")
    kept = json.loads(kept_path.read_text())
    assert "scaling" not in kept["train_args"] and kept["score"] == 90.0


def test_a_stale_result_cannot_choose_where_it_is_moved(matrix, tmp_path):
    """The stale copy's name comes from the path and its mtime, not from the file: a
    timestamp like 'x/../../escaped' neither escapes the results directory nor overwrites."""
    results = tmp_path / "results"
    results.mkdir()
    spec = tuning_runs(matrix, "sst2", "lora")[0]
    record = {**fake_result(spec, 90.0), "sizing": dataclasses.asdict(matrix.sizing["sst2"])}
    path = results / spec.filename
    victim = tmp_path / "escaped" / "evil.json"
    victim.parent.mkdir()
    victim.write_text("precious")
    hostile = "x/../../../escaped/evil"
    for score in (80.0, 85.0):  # twice: the second stale copy does not replace the first
        stale = {**record, "sizing": {**record["sizing"], "steps": 8}, "timestamp": hostile}
        path.write_text(json.dumps({**stale, "score": score}))
        write_result(path, {**record, "score": 70.0}, force=False)
    assert victim.read_text() == "precious"
    written = sorted(p.parent for p in tmp_path.rglob("*.json") if p != victim)
    assert written == [results, *[results / "stale"] * 2]
    kept = sorted(json.loads(p.read_text())["score"] for p in (results / "stale").iterdir())
    assert kept == [80.0, 85.0]


def test_settings_of_another_method_do_not_make_a_result_stale():
    lora = TrainArgs(task="sst2", method="lora", precision="fp32").to_dict()  # as run
    default_scaling = lora.pop("scaling")  # LR-LoRA's setting, absent from an old LoRA result
    assert settings(lora, "lora") == planned_settings("lora", "sst2", 4)
    variant = "lr-lora+rank_lr=0.3"
    assert planned_settings(variant, "sst2", 4)["rank_lr"] == 0.3
    recorded = {**lora, "rank_lr": 0.3, "scaling": default_scaling}
    assert settings(recorded, variant) == planned_settings(variant, "sst2", 4)


def test_every_lrlora_training_field_is_a_recorded_setting():
    """A new LR-LoRA option of `lrlora train` makes results stale when it changes, without a
    second list to keep in step (fields are marked where TrainArgs declares them)."""
    own = {f.name for f in dataclasses.fields(TrainArgs) if f.metadata["help"].startswith("LR-")}
    assert own and own == set(METHOD_SETTINGS["lr-lora"])
    assert METHOD_SETTINGS["adalora"] == ("adalora_orth_reg_weight",)
    before = {k: v for k, v in TrainArgs(task="sst2").to_dict().items() if k != "rebalance_every"}
    assert settings(before, "lr-lora")["rebalance_every"] == 50  # the default of that time
