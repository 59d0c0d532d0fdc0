"""`lrlora.app.train`: end-to-end runs of every method on a tiny BERT and the real GLUE files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("matplotlib")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lrlora.app.runs import RunExistsError  # noqa: E402
from lrlora.app.tasks import DataError  # noqa: E402
from lrlora.app.train import NonFiniteLossError, TrainArgs, planned_steps, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

RUN_FILES = ["config.json", "metrics.json", "ranks.json", "history.json",
             "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
             "figures/rank_heatmap.png", "figures/rank_trajectory.png"]  # fmt: skip
METRIC_KEYS = {"task", "method", "eval_split", "eval_rows", "train_rows", "metrics",
               "adapter_params", "head_params", "budget_params", "steps", "train_loss",
               "wall_time_s", "train_time_s", "steps_per_second", "eval_time_s"}  # fmt: skip
ROW_KEYS = {"name", "kind", "role", "depth", "r_max", "rho", "hard_rank", "params"}
N_TARGETS = 12  # 2 blocks x (query, key, value, attention.output.dense, intermediate, output)


def tiny_args(model_dir: str, out: Path, **overrides) -> TrainArgs:
    settings = dict(model=model_dir, output_dir=str(out), max_steps=6, batch_size=4,
                    train_limit=24, eval_limit=16, budget_rank=2, lr=5e-3, log_every=2,
                    log_ranks_every=2, rebalance_every=2, precision="fp32")  # fmt: skip
    settings.update(overrides)
    return TrainArgs(**settings)


def check_run_dir(run: Path, method: str) -> dict:
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    assert not missing
    assert not [p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.tmp")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS and metrics["method"] == method
    ranks = json.loads((run / "ranks.json").read_text())
    assert len(ranks["layers"]) == N_TARGETS
    assert all(set(row) == ROW_KEYS for row in ranks["layers"])
    steps = [p["step"] for p in ranks["trajectory"]]
    assert steps == [0, 2, 4, 6]
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["method"] == method and {"torch", "peft"} <= set(config["versions"])
    return metrics


@pytest.mark.parametrize("method", ["lr-lora", "lora", "adalora", "dora"])
def test_every_method_writes_a_complete_run(method, tiny_bert_dir, tmp_path):
    metrics = train(tiny_args(tiny_bert_dir, tmp_path / "run", method=method))
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    check_run_dir(tmp_path / "run", method)
    assert metrics["eval_rows"] == 16 and metrics["train_rows"] == 24
    assert 0 <= metrics["metrics"]["accuracy"] <= 100
    budget = 2 * 2 * (4 * (32 + 32) + 2 * (32 + 64))  # rank 2, 2 blocks of 6 linear layers
    assert metrics["budget_params"] == budget
    assert metrics["head_params"] == 32 * 2 + 2  # the classifier; the pooler is not trained
    if method in ("lora", "dora"):
        assert metrics["adapter_factor_params"] == budget
    if method == "lr-lora":  # the library's hard guarantee
        assert metrics["adapter_params"] <= budget


def test_lrlora_regression_adapter_loads_in_peft(tiny_bert_dir, tmp_path, monkeypatch):
    """STS-B (one output, MSE): the exported adapter alone gives the run's predictions (and
    so its Pearson). The tiny model's predictions differ by little from row to row, so they
    are compared, not only the Pearson, which is ill-conditioned there."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lrlora.app.tasks import compute_metrics, load_split, sequence

    seen = {}

    def spy(task, preds, labels):
        seen["preds"] = np.asarray(preds, dtype=np.float64).reshape(-1)
        return compute_metrics(task, preds, labels)

    monkeypatch.setattr(sequence, "compute_metrics", spy)
    run = tmp_path / "stsb"
    metrics = train(tiny_args(tiny_bert_dir, run, task="stsb"))
    check_run_dir(run, "lr-lora")
    assert set(metrics["metrics"]) == {"pearson", "spearmanr", "score"}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=1)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    rows = load_split("stsb", "dev", limit=16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batch = tokenizer([r.text_a for r in rows], [r.text_b for r in rows], padding=True,
                      truncation=True, max_length=128, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        preds = model(**batch).logits.squeeze(-1).double().numpy()
    np.testing.assert_allclose(preds, seen["preds"], rtol=0, atol=1e-4)
    loaded = compute_metrics("stsb", seen["preds"], [r.label for r in rows])["pearson"]
    assert loaded == pytest.approx(metrics["metrics"]["pearson"], abs=1e-6)


def test_refuses_to_overwrite_a_finished_run_unless_asked(tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_args(tiny_bert_dir, run, max_steps=2, log_ranks_every=0))
    with pytest.raises(RunExistsError, match="--overwrite"):
        train(tiny_args(tiny_bert_dir, run, max_steps=2))
    second = train(tiny_args(tiny_bert_dir, run, max_steps=3, overwrite=True, log_ranks_every=0))
    assert (first["steps"], second["steps"]) == (2, 3)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3


def test_non_finite_loss_stops_and_publishes_nothing(tiny_bert_dir, tmp_path):
    args = tiny_args(tiny_bert_dir, tmp_path / "run", method="lora", lr=1e38, max_steps=6)
    with pytest.raises(NonFiniteLossError, match=r"at step \d"):
        train(args)
    assert list(tmp_path.iterdir()) == []


def test_validation_slice_comes_from_the_training_split(tiny_bert_dir, tmp_path):
    metrics = train(tiny_args(tiny_bert_dir, tmp_path / "run", val_fraction=0.001, eval_limit=None,
                              max_steps=2, log_ranks_every=0))  # fmt: skip
    assert metrics["eval_split"] == "val" and metrics["eval_rows"] == round(0.001 * 67349)


def test_missing_data_file_is_a_data_error(tiny_bert_dir, tmp_path):
    (tmp_path / "data" / "glue").mkdir(parents=True)
    with pytest.raises(DataError, match="sst2 train not found"):
        train(tiny_args(tiny_bert_dir, tmp_path / "run", data_dir=str(tmp_path / "data")))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "sora"}, r"choose one of \['lr-lora', 'lora', 'adalora', 'dora', 'hand'\]"),
        ({"task": "mnli"}, "known tasks"),
        ({"task": "qnli"}, "no training split"),
        ({"budget_rank": 6, "r_max": 4}, r"choose a budget rank in \(0, 4\]"),
        ({"max_steps": 10, "epochs": 1.0}, "not both"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"adalora_orth_reg_weight": -0.1}, "adalora_orth_reg_weight must be >= 0"),
    ],
)
def test_bad_arguments_say_what_to_do(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainArgs(**overrides)


def test_defaults_and_derived_values():
    args = TrainArgs(budget_rank=3)
    assert args.r_max == 6 and args.max_steps == 400 and args.method == "lr-lora"
    assert args.run_dir == Path("runs/sst2-lr-lora-r3-s0")
    assert planned_steps(TrainArgs(epochs=2.0, batch_size=10), 95) == 20


def test_a_regression_head_starts_at_the_mean_training_label():
    from transformers import BertConfig, BertForSequenceClassification

    from lrlora.app.tasks.sequence import start_at_mean_label

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_labels=1)  # fmt: skip
    model = BertForSequenceClassification(config)
    start_at_mean_label(model, [0.0, 2.0, 5.0, 3.0])
    assert model.classifier.bias.item() == pytest.approx(2.5)
    classifier = BertForSequenceClassification(BertConfig(**{**config.to_dict(), "num_labels": 2}))
    before = classifier.classifier.bias.detach().clone()
    start_at_mean_label(classifier, [0.0, 1.0, 1.0])  # not a regression head: left alone
    assert classifier.classifier.bias.detach().equal(before)


def test_a_bf16_run_trains_under_autocast_and_records_its_precision(tiny_bert_dir, tmp_path):
    metrics = train(tiny_args(tiny_bert_dir, tmp_path / "run", precision="bf16"))
    check_run_dir(tmp_path / "run", "lr-lora")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["precision"] == "bf16" and config["resolved"]["precision"] == "bf16"
    assert metrics["train_loss"] == metrics["train_loss"]  # finite under autocast, not NaN


def test_a_pruning_lr_lora_run_probes_the_training_data_and_keeps_the_budget(
    tiny_bert_dir, tmp_path
):
    """`lrlora train --rank-update prune --harden-at 0.5`: the Trainer callback builds the
    probe, the run prunes half-way, and the adapter stays within the budget."""
    args = tiny_args(tiny_bert_dir, tmp_path / "run", rank_update="prune", harden_at=0.5)
    metrics = train(args)
    check_run_dir(tmp_path / "run", "lr-lora")
    assert 0 < metrics["adapter_params"] <= metrics["budget_params"]
    ranks = json.loads((tmp_path / "run" / "ranks.json").read_text())
    assert {p["step"]: max(p["hard_rank"].values()) for p in ranks["trajectory"]}[2] == 4
