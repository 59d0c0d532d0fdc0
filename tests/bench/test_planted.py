"""The planted-rank proving ground: teacher construction, metrics, patterns, a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from lrlora.bench import planted  # noqa: E402
from tiny import tiny_bert  # noqa: E402

PATTERN = {r"bert\.encoder\.layer\.1\.attention\.self\.value": 3, r".*\.query": 1}


def test_planted_teacher_has_the_planted_rank_and_the_budget_is_its_size():
    base = tiny_bert()
    ranks = planted.planted_ranks(base, PATTERN, planted.TARGETS)
    assert ranks["bert.encoder.layer.1.attention.self.value"] == 3
    assert ranks["bert.encoder.layer.0.attention.self.query"] == 1
    assert ranks["bert.encoder.layer.0.intermediate.dense"] == 0
    teacher = planted.plant(base, ranks, 0.15, torch.Generator().manual_seed(0))
    for name, rank in ranks.items():
        w0 = base.get_submodule(name).weight.double().detach()
        delta = (teacher.get_submodule(name).weight.double() - w0).detach()
        assert int(torch.linalg.matrix_rank(delta, atol=1e-5)) == rank
        if rank:
            assert float(delta.norm() / w0.norm()) == pytest.approx(0.15, rel=1e-4)
    # (d_in + d_out) per rank: value 32 + 32, query 32 + 32 in both blocks
    assert planted.planted_params(base, ranks) == 3 * 64 + 2 * 64


def test_a_rule_can_plant_a_stronger_delta():
    base = tiny_bert()
    pattern = {r".*layer\.1\.attention\.self\.value": [3, 2.0], r".*\.query": 1}
    assert planted.parse_pattern(r".*layer\.1\.attention\.self\.value=3@2,.*\.query=1") == {
        k: list(v) if isinstance(v, list) else v for k, v in pattern.items()
    }
    ranks = planted.planted_ranks(base, pattern, planted.TARGETS)
    strengths = planted.planted_strengths(base, pattern, planted.TARGETS)
    teacher = planted.plant(base, ranks, 0.15, torch.Generator().manual_seed(0), strengths)
    for name, expected in [("bert.encoder.layer.1.attention.self.value", 0.30),
                           ("bert.encoder.layer.0.attention.self.query", 0.15)]:  # fmt: skip
        w0 = base.get_submodule(name).weight.double().detach()
        delta = (teacher.get_submodule(name).weight.double() - w0).detach()
        assert float(delta.norm() / w0.norm()) == pytest.approx(expected, rel=1e-4)
    for bad in ('{"x": [2, 0]}', '{"x": [2]}', '{"x": [2, "big"]}'):
        with pytest.raises(planted.PatternError, match="strength"):
            planted.parse_pattern(bad)


def test_relative_error_is_one_for_the_base_and_zero_for_the_teacher():
    teacher, base = torch.randn(10, 4), torch.randn(10, 4)
    assert planted.relative_error(base, teacher, base) == 1.0
    assert planted.relative_error(teacher, teacher, base) == 0.0
    halfway = (base + teacher) / 2
    assert planted.relative_error(halfway, teacher, base) == pytest.approx(0.25)


def test_spearman_ranks_ties_and_constants():
    assert planted.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert planted.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert planted.spearman([0, 0, 5, 5], [1, 1, 9, 9]) == pytest.approx(1.0)
    assert planted.spearman([1, 3, 2], [1, 2, 3]) == pytest.approx(0.5)
    assert math.isnan(planted.spearman([2, 2, 2], [1, 2, 3]))


def test_patterns_are_data_named_inline_or_from_a_file(tmp_path):
    assert planted.parse_pattern("uniform") == {".*": 2}
    assert planted.parse_pattern(r".*\.query=4,.*=1") == {r".*\.query": 4, ".*": 1}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(PATTERN))
    assert planted.parse_pattern(str(path)) == PATTERN
    for bad, says in [("nonsense", "neither a name"), ('{"(": 2}', "not a regular"),
                      ('{"x": -1}', "integer >= 0"), ("a=b", "neither a name")]:  # fmt: skip
        with pytest.raises(planted.PatternError, match=says):
            planted.parse_pattern(bad)
    with pytest.raises(planted.PatternError, match="plants no rank"):
        planted.planted_ranks(tiny_bert(), {r"nothing": 3}, planted.TARGETS)
    with pytest.raises(planted.PatternError, match="its limit is 32"):
        planted.planted_ranks(tiny_bert(), {r".*\.query": 40}, planted.TARGETS)


def test_the_suite_runs_resumes_and_reports_end_to_end(tiny_bert_dir, tmp_path, capsys):
    from lrlora.cli import main

    results, docs = tmp_path / "results", tmp_path / "docs"
    inline = r".*layer\.1\..*=3,.*\.query=1"
    argv = ["bench", "--suite", "planted", "--quick", "--model", tiny_bert_dir,
            "--tasks", "uniform", inline, "--methods", "lora", "oracle", "lr-lora",
            "--results-dir", str(results), "--docs-dir", str(docs)]  # fmt: skip
    assert main(argv) == 0
    files = sorted(results.glob("planted__*.json"))
    assert len(files) == 6
    record = json.loads((results / "planted__uniform__lr-lora__s0.json").read_text())
    assert record["suite"] == "planted" and record["task"] == "uniform" and record["seed"] == 0
    assert 0 < record["metrics"]["rel_error"] < 2 and record["settings"]["rank_signal"]
    assert set(record["metrics"]["ranks"]) == set(record["planted"])
    assert record["metrics"]["adapter_params"] <= record["metrics"]["budget_params"]
    custom = [f for f in files if "custom-" in f.name]
    ours = next(f for f in custom if "lr-lora" in f.name)
    assert len(custom) == 3 and "rank_spearman" in json.loads(ours.read_text())["metrics"]
    report = (docs / "RESULTS-planted.md").read_text()
    assert "| uniform |" in report and (docs / "figures" / "planted-uniform.png").is_file()
    every_run = f"| uniform | lr-lora | {record['score']:.3f}"  # each run's own error
    assert "## Every run" in report and every_run in report
    capsys.readouterr()
    assert main(argv) == 0  # everything finished: nothing runs again
    assert "[1/" not in capsys.readouterr().out
    stale = json.loads(files[0].read_text())
    files[0].write_text(json.dumps({**stale, "sizing": {**stale["sizing"], "steps": 99}}))
    assert main(argv) == 0  # a result of another sizing runs again; the old one is kept
    assert "[1/1]" in capsys.readouterr().out
    assert len(list((results / "stale").glob("*.json"))) == 1


def test_a_bad_pattern_is_one_line_error(tmp_path, capsys):
    from lrlora.cli import main

    assert main(["bench", "--suite", "planted", "--tasks", "x=notarank",
                 "--results-dir", str(tmp_path)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrlora: error:") and "regex=rank" in err


def _result(task, method, seed, score, planted):
    return {"task": task, "method": method, "seed": seed, "score": score, "planted": planted,
            "metrics": {"rel_error": score, "rank_spearman": 0.9}}  # fmt: skip


def test_the_control_is_judged_against_lora_alone():
    """The control pattern has no oracle run (LoRA's allocation is the planted one): a
    rank-choosing method's row there compares it with LoRA, within 5% on every seed."""
    from lrlora.bench.planted_suite import target_rows

    flat = {"a": 2, "b": 2}
    results = [_result("uniform", "lora", s, 0.10, flat) for s in range(3)]
    results += [_result("uniform", "lr-lora", s, 0.104, flat) for s in range(3)]
    results += [_result("uniform", "lr-lora+rank_lr=0.1", s, 0.12, flat) for s in range(3)]
    rows = "\n".join(target_rows(results))
    assert "| uniform | lr-lora | 3 | – | 1.04 ± 0.00 (3) | – | yes |" in rows
    assert "| uniform | lr-lora+rank_lr=0.1 | 3 | – | 1.20 ± 0.00 (3) | – | no |" in rows
