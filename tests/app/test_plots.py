"""Figures render to valid PNGs from constructed rank rows and trajectories."""

from __future__ import annotations

import pytest

from lrlora.app.plots import (
    rank_by_role_and_depth,
    rank_heatmap,
    rank_trajectories,
    score_vs_params,
    summarize_ranks,
)
from lrlora.report import depth_of, role_of

pytest.importorskip("matplotlib")

BERT_MODULES = ["attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"]  # fmt: skip
LLAMA_MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip


def make_rows(prefix: str, modules: list[str], depth: int, r_max: int, seed: int = 0) -> list[dict]:
    """Rank rows as rank_report makes them, with a deterministic rank pattern."""
    rows = []
    for i in range(depth):
        for j, module in enumerate(modules):
            name = f"{prefix}.{i}.{module}"
            role, kind = role_of(name)
            rank = (3 * i + 5 * j + seed) % (r_max + 1)
            rows.append(dict(name=name, kind=kind, role=role, depth=depth_of(name), r_max=r_max,
                             rho=rank + 0.3, hard_rank=rank, params=rank * 96))  # fmt: skip
    return rows


def bert_rows(seed: int = 0) -> list[dict]:
    rows = make_rows("bert.encoder.layer", BERT_MODULES, 6, r_max=8, seed=seed)
    rows.append(dict(name="bert.pooler.dense", kind="other", role="other", depth=None, r_max=8,
                     rho=2.4, hard_rank=2, params=128))  # fmt: skip
    return rows


def llama_rows() -> list[dict]:
    return make_rows("model.layers", LLAMA_MODULES, 30, r_max=16)


def make_trajectory(rows: list[dict], steps: int = 40, budget: float | None = 5000.0) -> list:
    points = []
    for step in range(0, steps + 1, 2):
        t = step / steps
        points.append({
            "step": step, "tau": 1.0 * (0.01 ** t), "lambda": 0.1 * t,
            "allowance": 9000 - 4000 * t, "soft_params": 8800 - 3900 * t,
            "adapter_params": 8000 - 3000 * t, "budget_params": budget,
            "rho": {r["name"]: r["r_max"] * (1 - t) + r["rho"] * t for r in rows},
            "hard_rank": {r["name"]: round(r["r_max"] * (1 - t) + r["hard_rank"] * t)
                          for r in rows},
        })  # fmt: skip
    return points


def check_png(path, min_px: int = 300, max_px: int = 8000) -> tuple[int, int]:
    """A real PNG of a sensible size, and no temp file left beside it."""
    from matplotlib.image import imread

    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(path).shape[:2]
    assert min_px <= height <= max_px and min_px <= width <= max_px, (height, width)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    return height, width


@pytest.mark.parametrize("rows", [bert_rows(), llama_rows()], ids=["bert", "llama30"])
def test_rank_heatmap(tmp_path, rows):
    path = rank_heatmap(rows, tmp_path / "heatmap.png", title="test")
    height, _ = check_png(path)
    if len(rows) > 100:  # 30 layers: tall enough for a legible row each
        assert height >= 30 * 30


def test_rank_heatmap_overwrites_and_makes_folders(tmp_path):
    target = tmp_path / "figs" / "heatmap.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert rank_heatmap(make_rows("enc.layer", BERT_MODULES, 2, r_max=4), target) == target
    check_png(target)


def test_rank_trajectories(tmp_path):
    rows = bert_rows()
    check_png(rank_trajectories(make_trajectory(rows), rows, tmp_path / "traj.png"))


def test_rank_trajectories_penalty_mode_without_rows(tmp_path):
    """No budget (penalty mode) and no rows: the kind comes from the module names."""
    trajectory = make_trajectory(make_rows("model.layers", LLAMA_MODULES, 3, 16), 10, None)
    check_png(rank_trajectories(trajectory, [], tmp_path / "traj.png"))


def test_score_vs_params(tmp_path):
    points = [
        {"task": "sst2", "method": "lora r=8", "score": 0.93, "params": 300_000, "std": 0.004},
        {"task": "sst2", "method": "lr-lora", "score": 0.935, "params": 150_000, "std": 0.003},
        {"task": "sst2", "method": "lr-lora", "score": 0.94, "params": 290_000, "std": None},
        {"task": "sst2", "method": "full", "score": 0.945, "params": 110_000_000},
        {"task": "mrpc", "method": "lora r=8", "score": 0.88, "params": 300_000},
        {"task": "mrpc", "method": "adalora", "score": 0.885, "params": 280_000, "std": 0.01},
    ]
    check_png(score_vs_params(points, tmp_path / "score.png"))
    single = [p for p in points if p["task"] == "mrpc"]
    check_png(score_vs_params(single, tmp_path / "single" / "score.png", title="mrpc"))


def test_rank_by_role_and_depth(tmp_path):
    rows_by_task = {"sst2": bert_rows(0), "mrpc": bert_rows(1), "rte": bert_rows(2)}
    path, summary = rank_by_role_and_depth(rows_by_task, tmp_path / "roles.png")
    check_png(path)
    assert summary == summarize_ranks(rows_by_task)
    assert list(summary["by_kind"]) == ["attention", "mlp", "other"]
    assert list(summary["by_depth"]["attention"]) == list(range(6))


def test_summarize_ranks_by_hand():
    def row(role, kind, depth, rank):
        return dict(name=f"{depth}.{role}", kind=kind, role=role, depth=depth, r_max=8,
                    rho=float(rank), hard_rank=rank, params=0)  # fmt: skip

    rows_by_task = {
        "a": [row("mlp_in", "mlp", 0, 6), row("query", "attention", 0, 2),
              row("query", "attention", 1, 4)],
        "b": [row("query", "attention", 0, 4), row("mlp_in", "mlp", 0, 8),
              row("mlp_in", "mlp", None, 1)],
    }  # fmt: skip
    summary = summarize_ranks(rows_by_task)
    assert list(summary["by_role"]) == ["query", "mlp_in"]  # ROLE_ORDER, not first seen
    assert summary["by_role"] == pytest.approx({"query": 10 / 3, "mlp_in": 5.0})
    assert summary["by_kind"] == pytest.approx({"attention": 10 / 3, "mlp": 5.0})
    assert summary["by_depth"] == {"attention": {0: 3.0, 1: 4.0}, "mlp": {0: 7.0}}
    assert summarize_ranks({}) == {"by_role": {}, "by_kind": {}, "by_depth": {}}


def test_empty_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        rank_heatmap([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        rank_by_role_and_depth({"a": []}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
