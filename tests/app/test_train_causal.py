"""`lrlora train --task commonsense`: a causal LM instruction-tuned on the commonsense
training union and scored on the seven test sets, end to end on a tiny Llama and the real
data files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("matplotlib")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lrlora.app.tasks.causal import EVAL_SUBSET_SEED  # noqa: E402
from lrlora.app.tasks.commonsense import COMMONSENSE_TASKS, TRAIN_TASKS  # noqa: E402
from lrlora.app.train import TrainArgs, make_task, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

LLAMA_ROLES = {"query", "key", "value", "attn_out", "mlp_in", "mlp_out"}
N_TARGETS = 14  # 2 blocks x q/k/v/o/gate/up/down_proj


def causal_args(model_dir: str, out: Path, **overrides) -> TrainArgs:
    settings = dict(task="commonsense", model=model_dir, output_dir=str(out), max_steps=4,
                    batch_size=2, train_limit=8, eval_limit=2, budget_rank=2, lr=5e-3,
                    log_every=2, log_ranks_every=2, rebalance_every=2)  # fmt: skip
    settings.update(overrides)
    return TrainArgs(**settings)


@pytest.mark.parametrize("method", ["lr-lora", "lora", "adalora", "dora"])
def test_every_method_trains_and_scores_all_seven_tasks(method, tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    metrics = train(causal_args(tiny_llama_dir, run, method=method))
    scores = metrics["metrics"]
    assert set(scores) == {*COMMONSENSE_TASKS, "average", "accuracy", "score"}
    per_task = [scores[t] for t in COMMONSENSE_TASKS]
    assert all(s in (0.0, 50.0, 100.0) for s in per_task)  # 2 questions per task
    assert scores["score"] == scores["accuracy"] == pytest.approx(sum(per_task) / 7)
    assert metrics["eval_split"] == "test" and metrics["eval_rows"] == 2 * 7
    assert metrics["train_rows"] == 8 and metrics["head_params"] == 0  # lm_head stays frozen
    assert metrics["budget_params"] == 2 * 2 * (2 * 64 + 2 * 48 + 3 * 96)  # rank 2, 2 blocks
    if method == "lr-lora":
        assert metrics["adapter_params"] <= metrics["budget_params"]
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"
    layers = json.loads((run / "ranks.json").read_text())["layers"]
    assert len(layers) == N_TARGETS and {r["role"] for r in layers} == LLAMA_ROLES
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["head_modules"] == []


def load_data(args: TrainArgs):
    return make_task(args).load_data(args.task_options())


def test_training_union_and_evaluation_subset(tiny_llama_dir):
    args = causal_args(tiny_llama_dir, Path("unused"), train_limit=None, eval_limit=3)
    train_items, test_items, split = load_data(args)
    assert split == "test" and {i.task for i in train_items} == set(TRAIN_TASKS)
    assert [i.task for i in test_items] == [t for t in COMMONSENSE_TASKS for _ in range(3)]
    other_seed = load_data(causal_args(tiny_llama_dir, Path("unused"), seed=1, eval_limit=3))
    assert other_seed[1] == test_items  # every seed is scored on the same questions
    assert EVAL_SUBSET_SEED == 0
    val = load_data(
        causal_args(tiny_llama_dir, Path("x"), train_limit=None, eval_limit=None, val_fraction=0.01)
    )
    held_out = {(i.task, i.instruction) for i in val[1]}
    assert val[2] == "val" and len(val[1]) == 178 and len(val[0]) + 178 == len(train_items)
    assert not held_out & {(i.task, i.instruction) for i in val[0]}


def test_validation_run_scores_the_held_out_slice(tiny_llama_dir, tmp_path):
    metrics = train(causal_args(tiny_llama_dir, tmp_path / "run", val_fraction=0.01, eval_limit=6))
    assert metrics["eval_split"] == "val" and metrics["eval_rows"] == 6
    assert set(metrics["metrics"]) - {"average", "accuracy", "score"} <= set(TRAIN_TASKS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "sst2", "eval_tasks": ["piqa"]}, "--eval-tasks is for --task commonsense"),
        ({"eval_tasks": ["hellaswag"]}, r"unknown --eval-tasks \['hellaswag'\]"),
        ({"eval_every": 10}, "--eval-every is not available for commonsense"),
        ({"eval_mode": "vote"}, "eval_mode must be 'score' or 'generate'"),
    ],
)
def test_bad_commonsense_arguments_say_what_to_do(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainArgs(**{"task": "commonsense", **overrides})
