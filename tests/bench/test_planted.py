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
