"""The runs a quality report's tables leave out: stale and off-plan final runs are grouped
by what they were recorded with, relabelled originals and other matrices' runs are left
out, and a variant is paired with the runs that differ from it only in its own setting."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fakes import fake_result, fill, small_matrix
from hypothesis import given
from hypothesis import strategies as st

from fuzz import FUZZ, contents
from lrlora.bench import history
from lrlora.bench.plan import FINAL, TUNE, RunSpec, build_plan, planned_settings

VARIANT = "lr-lora+rank_lr=0.3"
SCORES = {(t, m): [80.0, 81.0, 82.0] for t in ("sst2", "stsb") for m in ("lora", "lr-lora")}


def record(folder, spec, score, stamp="", relabelled_from=None, **unlike):
    """A result of ``spec`` recorded with today's settings changed by ``unlike``."""
    result = fake_result(spec, score)
    result["train_args"] = {**planned_settings(spec.method, spec.task, spec.budget_rank), **unlike}
    if relabelled_from:
        result["relabelled_from"] = {"file": relabelled_from}
    name = spec.filename.replace(".json", f"{stamp}.json")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(result))
    return name


def runs(matrix, method, lr, stage=FINAL, budget_rank=None):
    rank = budget_rank or matrix.budget_rank
    return [RunSpec(matrix.label, "sst2", method, rank, lr, seed, stage) for seed in matrix.seeds]


def test_left_out_runs_are_grouped_paired_and_rendered(tmp_path):
    matrix = small_matrix(methods=("lora", "lr-lora", VARIANT))
    fill(tmp_path, matrix, SCORES)  # the tables: every method at 2e-3
    stale = tmp_path / "stale"
    for spec, score in zip(runs(matrix, "lr-lora", 2e-3), (80.0, 81.0, 82.0), strict=True):
        record(stale, spec, score, ".old", rank_update="optimizer")
    for spec, score in zip(runs(matrix, VARIANT, 2e-3), (81.0, 83.0, 82.0), strict=True):
        record(stale, spec, score, ".old", rank_update="optimizer")
    for spec in runs(matrix, "lr-lora", 1e-3):  # another rate, left in place
        record(tmp_path, spec, 70.0)
    source = record(stale, runs(matrix, "lr-lora", 4e-3)[0], 60.0, ".src")
    record(tmp_path, runs(matrix, VARIANT, 4e-3)[0], 60.0, relabelled_from=f"stale/{source}")
    record(stale, runs(matrix, "lr-lora", 2e-3, TUNE)[0], 50.0, ".tune")
    record(stale, runs(matrix, "lr-lora", 2e-3, budget_rank=8)[0], 50.0, ".r8")

    plan = build_plan(matrix, tmp_path)
    groups = history.earlier_groups(plan)
    found = [(g.method, g.lr, g.unlike_today, g.stale, g.finished) for g in groups]
    assert found == [
        ("lr-lora", 1e-3, {}, False, {0: 70.0, 1: 70.0, 2: 70.0}),
        ("lr-lora", 2e-3, {"rank_update": "optimizer"}, True, {0: 80.0, 1: 81.0, 2: 82.0}),
        (VARIANT, 2e-3, {"rank_update": "optimizer"}, True, {0: 81.0, 1: 83.0, 2: 82.0}),
        (VARIANT, 4e-3, {}, False, {0: 60.0}),  # the relabelled copy, not its original
    ]
    former, variant = groups[1], groups[2]
    assert history.reference(variant, groups) is former
    assert history.reference(former, groups) is None  # not a variant
    text = "\n".join(history.section(plan))
    assert "| 3 | sst2 | `lr-lora+rank_lr=0.3` | 2e-3 | rank_update=optimizer | stale/ |" in text
    assert "| +1.00 (2–0–1) vs #2 |" in text


def test_no_left_out_runs_no_section(matrix, tmp_path):
    fill(tmp_path, matrix, SCORES)
    assert history.section(build_plan(matrix, tmp_path)) == []


@FUZZ
@given(data=st.data())
def test_an_edited_stale_file_is_left_out_or_listed_never_a_crash(data):
    matrix = small_matrix(methods=("lora", "lr-lora", VARIANT))
    spec = runs(matrix, VARIANT, 2e-3)[0]
    valid = fake_result(spec, 80.0)
    valid["train_args"] = planned_settings(VARIANT, "sst2", matrix.budget_rank)
    raw = data.draw(contents(json.dumps(valid).encode(), valid))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "stale").mkdir()
        (Path(tmp) / "stale" / spec.filename).write_bytes(raw)
        text = "\n".join(history.section(build_plan(matrix, Path(tmp))))
    assert text == "" or "## Runs the tables above leave out" in text
