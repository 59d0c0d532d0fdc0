import dataclasses

import pytest
import torch

import lrlora
from lrlora.inject import matches
from tiny import BERT_TARGETS, bert_config, tiny_bert


def test_matching_follows_peft_semantics():
    assert matches("encoder.layer.0.attention.self.query", ["query"])
    assert matches("encoder.layer.0.attention.self.query", ["self.query"])
    assert not matches("encoder.layer.0.attention.self.query", ["uery"])  # suffix must be dotted
    assert matches("a.layer.3.q_proj", r".*\.\d\.q_proj")
    assert not matches("a.layer.3.q_proj", r"q_proj")  # a regex must match the full name


def test_inject_wraps_targets_and_freezes_everything_else():
    model = lrlora.inject(tiny_bert(), bert_config())
    names = [n for n, _ in lrlora.lora_layers(model)]
    assert len(names) == 2 * len(BERT_TARGETS)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n
        for n in trainable
        if n.split(".")[-1] in ("lora_A", "lora_B", "rho") or n.startswith("classifier.")
    }
    assert "classifier.weight" in trainable
    assert not any(".base." in n for n in trainable)


def test_exclude_modules():
    model = lrlora.inject(
        tiny_bert(), bert_config(exclude_modules=["bert.encoder.layer.0.attention.self.query"])
    )
    names = [n for n, _ in lrlora.lora_layers(model)]
    assert "bert.encoder.layer.0.attention.self.query" not in names
    assert "bert.encoder.layer.1.attention.self.query" in names


def test_base_weights_never_change_during_training(tokens):
    model = lrlora.inject(tiny_bert(), bert_config())
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2, weight_decay=0.1))
    controller = lrlora.RankController(model, optimizer, total_steps=5)
    for _ in range(5):
        model(tokens, labels=torch.tensor([0, 1, 1])).loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert any(layer.lora_B.abs().sum() > 0 for _, layer in lrlora.lora_layers(model))


def test_optimizer_groups_give_rho_its_own_rate_and_no_decay():
    model = lrlora.inject(tiny_bert(), bert_config(rank_lr=0.123))
    adapter, rank = lrlora.optimizer_groups(model, lr=1e-3, weight_decay=0.1)
    assert rank["lr"] == 0.123 and rank["weight_decay"] == 0.0
    assert len(rank["params"]) == 2 * len(BERT_TARGETS)
    assert all(p.dim() == 0 for p in rank["params"])
    assert adapter["weight_decay"] == 0.1 and all(p.dim() > 0 for p in adapter["params"])


def test_no_match_lists_closest_names():
    with pytest.raises(ValueError, match=r"matched no linear layer.*query"):
        lrlora.inject(tiny_bert(), bert_config(target_modules=["qurey"]))


def test_non_linear_target_is_refused():
    with pytest.raises(ValueError, match="LayerNorm.*nn.Linear"):
        lrlora.inject(tiny_bert(), bert_config(target_modules=["attention.output.LayerNorm"]))


def test_impossible_budget_params_states_feasible_range():
    with pytest.raises(ValueError, match=r"impossible.*choose a budget in \["):
        lrlora.inject(tiny_bert(), bert_config(budget_rank=None, budget_params=10**9))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"r_max": 0}, "r_max must be a positive integer"),
        ({"budget_rank": 9}, r"impossible with r_max=4: choose a budget rank in \(0, 4\]"),
        ({"budget_rank": -1}, "budget rank in"),
        ({"init_rank": 0}, "init_rank must be in"),
        ({"tau_start": 0.01, "tau_end": 0.1}, "temperature must fall"),
        ({"warmup_frac": 0.8, "decay_end_frac": 0.5}, "cannot end before it starts"),
        ({"budget_params": 100}, "exactly one of budget_rank"),
        ({"rank_mode": "sparse"}, "rank_mode must be"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"rank_lr": float("nan")}, "rank_lr must be a finite number, got nan"),
        ({"tau_end": float("inf")}, "tau_end must be a finite number, got inf"),
        ({"budget_rank": "four"}, "budget_rank must be a finite number, got 'four'"),
        ({"r_max": 4.0}, "r_max must be an integer"),
        ({"fill_budget": "no"}, "fill_budget must be True or False"),
        ({"target_modules": ["query", 3]}, "target_modules must be a list of module names"),
        ({"modules_to_save": "classifier"}, "modules_to_save must be a list of module names"),
    ],
)
def test_bad_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        bert_config(**overrides)


def test_every_float_field_refuses_nan_and_inf():
    floats = [f.name for f in dataclasses.fields(lrlora.LRLoRAConfig)
              if "float" in str(f.type)]  # fmt: skip
    assert {"alpha", "rank_lr", "tau_start", "penalty", "init_rank", "budget_rank"} <= set(floats)
    for name in floats:
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError, match=f"{name} must be a finite number"):
                bert_config(**{name: bad})


def test_modules_to_save_must_exist():
    with pytest.raises(ValueError, match="modules_to_save"):
        lrlora.inject(tiny_bert(), bert_config(modules_to_save=["head"]))


def test_config_round_trips_through_dict():
    config = bert_config()
    assert lrlora.LRLoRAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown LRLoRAConfig fields"):
        lrlora.LRLoRAConfig.from_dict({**config.to_dict(), "rank": 3})


def test_a_second_inject_and_a_target_typo_are_refused():
    model = lrlora.inject(tiny_bert(), bert_config(target_modules=["query"]))
    with pytest.raises(ValueError, match="inject once per model"):
        lrlora.inject(model, bert_config(target_modules=["value"]))
    with pytest.raises(ValueError, match=r"\['kee'\] matched no linear layer.*'key'"):
        lrlora.inject(tiny_bert(), bert_config(target_modules=["query", "kee"]))
    with pytest.raises(ValueError, match="r_max=40 is more than .* can hold"):
        lrlora.inject(tiny_bert(), bert_config(r_max=40))
