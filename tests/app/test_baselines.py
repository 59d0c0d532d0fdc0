"""peft baselines at a matched budget, on tiny BERT (nn.Linear) and GPT-2 (Conv1D) models."""

import pytest
import torch

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from lrlora.app.allocation import hand_ranks  # noqa: E402
from lrlora.app.baselines import (  # noqa: E402
    adalora_step,
    adapter_param_counts,
    final_ranks,
    lora_budget_params,
    make_peft_model,
    peft_callbacks,
    target_layers,
)

H, LAYERS, CLASSES = 32, 2, 2
TARGETS = ["query", "value"]  # 2 per layer, each 32 -> 32
HEAD = H * CLASSES + CLASSES  # classifier weight + bias


def tiny_bert(layers=LAYERS):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=H,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=CLASSES,
    )
    return transformers.BertForSequenceClassification(config)


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=H, n_layer=LAYERS, n_head=2, vocab_size=100)
    return transformers.GPT2LMHeadModel(config)


def batch(n=8, seq=6):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (n, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 2}


def train(model, steps, method=None):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    data, losses = batch(), []
    for step in range(1, steps + 1):
        loss = model(**data).loss
        loss.backward()
        opt.step()
        if method == "adalora":
            adalora_step(model, step)
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_budget_matches_hand_count():
    bert, gpt2 = tiny_bert(), tiny_gpt2()
    assert lora_budget_params(bert, TARGETS, 4) == LAYERS * 2 * 4 * (H + H)
    assert lora_budget_params(bert, r".*self\.(query|value)", 4) == LAYERS * 2 * 4 * (H + H)
    # 'dense': attention.output (32->32), intermediate (32->64), output (64->32), and pooler
    assert lora_budget_params(bert, ["dense"], 1) == LAYERS * (64 + 96 + 96) + 64
    # Conv1D weight is (d_in, d_out): c_attn 32 -> 96, attn.c_proj 32 -> 32, mlp.c_proj 128 -> 32
    assert lora_budget_params(gpt2, ["c_attn", "c_proj"], 2) == LAYERS * 2 * (128 + 64 + 160)


def test_errors():
    with pytest.raises(ValueError, match="query"):
        lora_budget_params(tiny_bert(), ["qurey"], 4)
    with pytest.raises(ValueError, match="adalora"):
        make_peft_model(tiny_bert(), "sora", 4, TARGETS)
    with pytest.raises(ValueError, match="total_steps"):
        make_peft_model(tiny_bert(), "adalora", 4, TARGETS, task_type="SEQ_CLS")
    with pytest.warns(UserWarning, match="orthogonality"):
        make_peft_model(tiny_bert(), "adalora", 2, TARGETS, total_steps=10, orth_reg_weight=0.1)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_dora_train_and_count(method):
    model = tiny_bert()
    budget = lora_budget_params(model, TARGETS, 4)
    peft_model = make_peft_model(
        model, method, 4, TARGETS, modules_to_save=["classifier"], task_type="SEQ_CLS", seed=0
    )
    w0 = peft_model.get_base_model().bert.encoder.layer[0].attention.self.query.weight.clone()
    losses = train(peft_model, 10)
    assert losses[-1] < losses[0]
    assert torch.equal(
        w0, peft_model.get_base_model().bert.encoder.layer[0].attention.self.query.weight
    )
    counts = adapter_param_counts(peft_model, method)
    assert counts["adapter"] == budget
    assert counts["extras"] == (LAYERS * 2 * H if method == "dora" else 0)
    assert counts["head"] == HEAD
    assert counts["trainable"] == counts["adapter"] + counts["extras"] + counts["head"]
    ranks = final_ranks(peft_model, method)
    assert ranks["bert.encoder.layer.1.attention.self.value"] == 4
    assert len(ranks) == LAYERS * 2 and set(ranks.values()) == {4}


def test_hand_allocation_is_lora_with_its_ranks_at_lora_scaling():
    """peft's rank_pattern holds the hand ranks, the count is the budget, every layer's
    scaling is LoRA's (alpha / r = 2), and layers at rank 0 get no adapter."""
    targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense",
               "output.dense"]  # fmt: skip
    model = tiny_bert(layers=3)  # ranks 0, 1, 2 by block at budget rank 1
    budget = lora_budget_params(model, targets, 1)
    planned = hand_ranks(target_layers(model, targets), budget)
    peft_model = make_peft_model(model, "hand", 1, targets, modules_to_save=["classifier"],
                                 task_type="SEQ_CLS", seed=0)  # fmt: skip
    kept = {name: rank for name, rank in planned.items() if rank > 0}
    assert final_ranks(peft_model, "hand") == kept and len(kept) < len(planned)
    counts = adapter_param_counts(peft_model, "hand")
    assert counts["adapter"] == budget and counts["extras"] == 0
    for name, rank in kept.items():
        layer = peft_model.get_base_model().get_submodule(name)
        assert layer.scaling["default"] == 2.0 and layer.r["default"] == rank
    losses = train(peft_model, 10)
    assert losses[-1] < losses[0]


def test_dora_on_conv1d():
    model = tiny_gpt2()
    budget = lora_budget_params(model, ["c_attn"], 2)
    peft_model = make_peft_model(model, "dora", 2, ["c_attn"], task_type="CAUSAL_LM")
    counts = adapter_param_counts(peft_model, "dora")
    assert counts["adapter"] == budget
    assert counts["extras"] == LAYERS * 3 * H  # magnitude vector of length d_out = 96
    ids = batch()["input_ids"]
    assert torch.isfinite(peft_model(input_ids=ids, labels=ids).loss)


def check_adalora_pruned(peft_model, target_r):
    ranks = final_ranks(peft_model, "adalora")
    n_layers = len(ranks)
    assert n_layers == LAYERS * 2
    assert sum(ranks.values()) <= target_r * n_layers  # started at init_r = 3 per layer
    counts = adapter_param_counts(peft_model, "adalora")
    assert counts["adapter"] == sum(k * (H + H) for k in ranks.values())
    assert counts["extras"] == sum(ranks.values())
    assert counts["head"] == HEAD
    for name, module in peft_model.get_base_model().named_modules():
        if name in ranks:  # pruned singular values are held at zero
            assert int((module.lora_E["default"] != 0).sum()) <= ranks[name]


def test_adalora_orthogonality_penalty_is_off_unless_asked():
    default = make_peft_model(
        tiny_bert(), "adalora", 2, TARGETS, total_steps=10, task_type="SEQ_CLS"
    )
    assert default.peft_config["default"].orth_reg_weight == 0.0
    data, _ = batch(), default.eval()  # no penalty: the loss is the task loss (no dropout)
    torch.testing.assert_close(default(**data).loss, default.get_base_model()(**data).loss)
    asked = make_peft_model(tiny_bert(), "adalora", 2, TARGETS, total_steps=10,
                            task_type="SEQ_CLS", orth_reg_weight=0.1)  # fmt: skip
    assert asked.peft_config["default"].orth_reg_weight == 0.1


def test_adalora_plain_loop_prunes_to_target():
    peft_model = make_peft_model(
        tiny_bert(), "adalora", 2, TARGETS, total_steps=10, task_type="SEQ_CLS", seed=0,
        orth_reg_weight=0.5,
    )  # fmt: skip
    assert set(final_ranks(peft_model, "adalora").values()) == {3}
    data = batch()
    # the orthogonality penalty is added to the task loss
    assert peft_model(**data).loss > peft_model.get_base_model()(**data).loss
    with pytest.raises(RuntimeError, match="zero_grad"):
        adalora_step(peft_model, 1)
    train(peft_model, 10, "adalora")
    check_adalora_pruned(peft_model, 2)


def test_adalora_with_trainer(tmp_path):
    peft_model = make_peft_model(
        tiny_bert(), "adalora", 2, TARGETS, total_steps=10, task_type="SEQ_CLS", seed=0
    )
    data = batch()
    rows = [{k: v[i] for k, v in data.items()} for i in range(len(data["labels"]))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=10,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=peft_model,
        args=args,
        train_dataset=rows,
        callbacks=peft_callbacks(peft_model, "adalora"),
    )
    trainer.train()
    assert peft_callbacks(peft_model, "lora") == []
    check_adalora_pruned(peft_model, 2)
