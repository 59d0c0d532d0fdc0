"""Fuzzing the benchmarks' result files. A quality result that is not a finished result of its
run (random, cut short, edited) counts as not run: it is rerun and kept aside, never lost or
overwritten; lr_choice.json likewise. A speed record either renders or is a BadFileError
naming it. Never another exception, and nothing is written outside the results directory
(and, for the speed report, the docs directory)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fakes import fake_result, small_matrix
from hypothesis import given
from hypothesis import strategies as st

from fuzz import FUZZ, contents, tree
from lrlora.bench.plan import RESULT_SHAPE, build_plan, load_result, tuning_runs
from lrlora.bench.quality import ResultExistsError, write_lr_choices, write_result
from lrlora.bench.speed import SpeedArgs
from lrlora.bench.speed_md import run_speed_bench
from lrlora.util import BadFileError, shape_mismatch

SPEC = tuning_runs(small_matrix(), "sst2", "lora")[0]
RESULT = fake_result(SPEC, 80.0)
SPEED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "speed-cpu.json"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@FUZZ
@given(data=st.data())
def test_a_result_file_loads_or_counts_as_not_run(data):
    raw = data.draw(contents(json.dumps(RESULT).encode(), RESULT))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SPEC.filename
        path.write_bytes(raw)
        before = tree(Path(tmp))
        found = load_result(path, SPEC.id)
        assert found is None or shape_mismatch(found, RESULT_SHAPE) is None
        assert tree(Path(tmp)) == before


@FUZZ
@given(data=st.data())
def test_writing_a_result_never_loses_the_file_in_its_place(data):
    raw = data.draw(contents(json.dumps(RESULT).encode(), RESULT))
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        results.mkdir()
        (results / SPEC.filename).write_bytes(raw)
        try:
            write_result(results / SPEC.filename, fake_result(SPEC, 70.0), force=False)
        except ResultExistsError:
            assert (results / SPEC.filename).read_bytes() == raw  # a finished result stays
        else:
            kept = [p.read_bytes() for p in (results / "stale").glob("*")]
            assert kept == [raw] and load_result(results / SPEC.filename, SPEC.id)["score"] == 70
        assert all(p.is_relative_to(results) for p in Path(tmp).rglob("*") if p != results)


@FUZZ
@given(data=st.data())
def test_lr_choices_keep_an_unreadable_file_aside(data):
    choices = {"glue-test/sst2/lora/r4": {"chosen": 1e-3, "grid": [1e-3]}}
    raw = data.draw(contents(json.dumps(choices).encode(), choices))
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        results.mkdir()
        (results / "lr_choice.json").write_bytes(raw)
        write_lr_choices(build_plan(small_matrix(), results))
        files = _files(results)
        assert raw in files.values() or json.loads(files["lr_choice.json"]) == json.loads(raw)
        assert set(files) <= {"lr_choice.json", *(f"stale/{p.name}" for p in
                                                  (results / "stale").glob("*"))}  # fmt: skip


@FUZZ
@given(data=st.data())
def test_a_speed_record_renders_or_names_the_file(data):
    valid = SPEED.read_bytes()
    raw = data.draw(contents(valid, json.loads(valid)))
    with tempfile.TemporaryDirectory() as tmp:
        results, docs = Path(tmp) / "results", Path(tmp) / "docs"
        results.mkdir()
        (results / "speed-cpu.json").write_bytes(raw)
        args = SpeedArgs(report_only=True, results_dir=str(results), docs_dir=str(docs))
        try:
            run_speed_bench(args)
        except BadFileError as err:
            assert err.path == results / "speed-cpu.json"
            assert (results / "speed-cpu.json").read_bytes() == raw and not docs.exists()
        else:
            assert (docs / "PERFORMANCE.md").is_file()
        written = [p for p in Path(tmp).rglob("*") if p.is_file()]
        assert all(p.parent in (results, docs) for p in written)


PLANTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PLANTED_RESULT = PLANTED / "planted__attention-deep__lr-lora__s0.json"


@FUZZ
@given(data=st.data())
def test_a_planted_result_loads_and_reports_or_counts_as_not_run(data):
    from lrlora.bench import planted_suite

    assert planted_suite.read_result(PLANTED_RESULT) is not None  # the stored one is valid
    document = json.loads(PLANTED_RESULT.read_text())
    raw = data.draw(contents(PLANTED_RESULT.read_bytes(), document))
    with tempfile.TemporaryDirectory() as tmp:
        results, docs = Path(tmp) / "results", Path(tmp) / "docs"
        results.mkdir()
        (results / PLANTED_RESULT.name).write_bytes(raw)
        before = tree(results)
        found = planted_suite.read_result(results / PLANTED_RESULT.name)
        assert found is None or shape_mismatch(found, planted_suite.RESULT_SHAPE) is None
        if found is not None:  # whatever passes the check, the report can draw
            planted_suite.write_report(results, docs, ["lrlora", "bench"])
        assert tree(results) == before
        assert {p.parent for p in Path(tmp).rglob("*") if p.is_file()} <= {
            results,
            docs,
            docs / "figures",
        }
