"""The speed benchmark on a tiny BERT: the JSON and PERFORMANCE.md carry every variant and
ratio; the memory measure is deterministic and sees the adapter's activations. Nothing
here asserts on time."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lrlora import LRLoRALinear
from lrlora.bench.speed import (
    INFER_VARIANTS,
    REBALANCED,
    TRAIN_VARIANTS,
    SpeedArgs,
    build_variants,
    make_batch,
    training_memory,
)
from lrlora.bench.speed_md import run_speed_bench

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config)


def tiny_args(tmp_path, **changes) -> SpeedArgs:
    settings = dict(batch_size=2, seq_len=16, rounds=1, steps=2, warmup=1, infer_steps=1)
    settings.update(results_dir=str(tmp_path / "results"), docs_dir=str(tmp_path / "docs"))
    settings.update(changes)
    return SpeedArgs(**settings)


def test_bench_writes_json_and_markdown_with_every_variant(tmp_path):
    run_speed_bench(tiny_args(tmp_path), tiny_bert())
    record = json.loads((tmp_path / "results" / "speed-cpu.json").read_text())
    train, infer = record["train"], record["inference"]
    assert set(train["summary"]) == {*TRAIN_VARIANTS, REBALANCED}
    for row in [*train["summary"].values(), *train["cpu_summary"].values()]:
        assert {"median_ms", "vs_lora", "vs_base", "vs_adalora"} <= set(row)
    assert train["summary"]["lora"]["vs_lora"] == 1.0
    assert set(train["memory"]) == set(TRAIN_VARIANTS)
    assert all(m["vs_lora"] > 0 and m["total"] > 0 for m in train["memory"].values())
    assert set(infer["summary"]) == set(INFER_VARIANTS)
    assert infer["merged_same_architecture"]
    assert len(record["targets"]) == 4 and all(
        isinstance(t["met"], bool) for t in record["targets"]
    )
    text = (tmp_path / "docs" / "PERFORMANCE.md").read_text()
    assert record["command"].startswith("lrlora bench-speed") and record["command"] in text
    # The record names no machine's directory: the temporary directories read <tmp>/...
    raw = (tmp_path / "results" / "speed-cpu.json").read_text()
    assert str(tmp_path) not in raw and "<tmp>/" in record["command"]
    assert "shared with other jobs" in text
    for phrase in ("LoRA, r = R", "AdaLoRA, init_r = R", "DoRA, r = R", "frozen base",
                   "LR-LoRA merged", "LR-LoRA exported"):  # fmt: skip
        assert phrase in text
    assert text.count("**met**") + text.count("**MISSED**") == 4
    (tmp_path / "docs" / "PERFORMANCE.md").unlink()
    run_speed_bench(dataclasses.replace(tiny_args(tmp_path), report_only=True))
    assert (tmp_path / "docs" / "PERFORMANCE.md").read_text() == text


def test_memory_is_deterministic_and_lora_exceeds_the_frozen_base(tmp_path):
    model, args = tiny_bert(), tiny_args(tmp_path, rank=8)
    variants = build_variants(model, args, ["base", "lora", "lr-lora"])
    batch = make_batch(model, args)
    for variant in variants.values():
        variant.step(batch)  # creates the optimizer state
    first = {name: training_memory(v, batch) for name, v in variants.items()}
    second = {name: training_memory(v, batch) for name, v in variants.items()}
    assert first == second
    assert first["lora"]["activations"] > first["base"]["activations"]
    assert first["lora"]["total"] > first["base"]["total"]
    # The gate and scaling are folded into A, so LR-LoRA saves LoRA's activations plus
    # parameter-sized tensors only (A scaled by s g, the gate): under R x (d_in + 3) floats
    # per layer, whatever the batch.
    layers = [m for m in variants["lr-lora"].model.modules() if isinstance(m, LRLoRALinear)]
    extra = first["lr-lora"]["activations"] - first["lora"]["activations"]
    assert 0 <= extra <= sum(4 * m.r_max * (m.d_in + 3) for m in layers)


def test_args_reject_bad_sizes():
    with pytest.raises(ValueError, match="rank must be >= 2"):
        SpeedArgs(rank=1)
    with pytest.raises(ValueError, match="rounds"):
        SpeedArgs(rounds=0)


def test_fast_path_times_both_precisions_and_bf16_keeps_the_loss(tmp_path):
    run_speed_bench(tiny_args(tmp_path, fast_path=True), tiny_bert())
    record = json.loads((tmp_path / "results" / "speed-cpu.json").read_text())
    fast = record["fast_path"]
    assert set(fast["speedup"]) == {"lora", "lr-lora"}
    assert all(v > 0 for v in fast["tokens_per_s"].values())
    for name in ("lora", "lr-lora"):  # the same weights and batch: bf16 moves the loss little
        fp32, bf16 = fast["first_loss"][f"{name} fp32"], fast["first_loss"][f"{name} bf16"]
        assert bf16 == pytest.approx(fp32, rel=2e-2)
    text = (tmp_path / "docs" / "PERFORMANCE.md").read_text()
    assert "## Fast path: bf16 autocast against fp32" in text and "--precision auto" in text
    run_speed_bench(dataclasses.replace(tiny_args(tmp_path), report_only=True))
    assert (tmp_path / "docs" / "PERFORMANCE.md").read_text() == text
