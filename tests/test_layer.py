import pytest
import torch
from torch import nn

import lrlora
from lrlora.layer import LRLoRALinear
from tiny import bert_config, randomize_adapters, tiny_bert, tiny_gpt2


def test_output_equals_base_at_init(tokens):
    base = tiny_bert()
    expected = base(tokens).logits
    model = lrlora.inject(tiny_bert(), bert_config())
    torch.testing.assert_close(model(tokens).logits, expected)


def test_conv1d_output_equals_base_at_init(tokens):
    expected = tiny_gpt2()(tokens).logits
    model = lrlora.inject(
        tiny_gpt2(),
        lrlora.LRLoRAConfig(target_modules=["c_attn", "c_proj", "c_fc"], r_max=4, budget_rank=2),
    )
    assert all(layer.fan_in_fan_out for _, layer in lrlora.lora_layers(model))
    torch.testing.assert_close(model(tokens).logits, expected)


@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt2])
def test_merge_unmerge_restores_weights_and_is_idempotent(make, tokens):
    targets = ["query", "value", "intermediate.dense"] if make is tiny_bert else ["c_attn", "c_fc"]
    model = lrlora.inject(
        make(), lrlora.LRLoRAConfig(target_modules=targets, r_max=4, budget_rank=2)
    )
    randomize_adapters(model)
    out = model(tokens).logits
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    w0 = [layer.base.weight.clone() for layer in layers]
    for layer in layers:
        layer.merge()
        layer.merge()  # merging twice merges once
    torch.testing.assert_close(model(tokens).logits, out, atol=1e-5, rtol=1e-5)
    for layer in layers:
        layer.unmerge()
    for layer, w in zip(layers, w0, strict=True):
        torch.testing.assert_close(layer.base.weight, w, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(tokens).logits, out)


def test_disable_adapters_gives_base_output(tokens):
    expected = tiny_bert()(tokens).logits
    model = lrlora.inject(tiny_bert(), bert_config())
    randomize_adapters(model)
    assert not torch.allclose(model(tokens).logits, expected)
    with lrlora.disable_adapters(model):
        torch.testing.assert_close(model(tokens).logits, expected)
    assert not torch.allclose(model(tokens).logits, expected)


def _layer(r_max=6, rho=3.3, tau=0.3, seed=0) -> LRLoRALinear:
    torch.manual_seed(seed)
    layer = LRLoRALinear(nn.Linear(10, 7), r_max=r_max, init_rank=rho, alpha=4.0, ref_rank=2.0)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.tau.fill_(tau)
    return layer


@pytest.mark.parametrize("tau", [0.5, 0.1, 0.02])
def test_hardening_change_is_bounded_by_soft_gate_mass(tau):
    """||y_soft - y_hard|| <= s * sum_i |g_i - h_i| * ||b_i|| * ||a_i x|| (triangle inequality),
    and that bound vanishes as tau -> 0."""
    layer = _layer(tau=tau)
    x = torch.randn(5, 10)
    g = layer.gate().detach()
    soft = layer(x).detach()
    h_a = (x @ layer.lora_A.T).detach()  # (5, R)
    layer.harden()
    hard = layer(x).detach()
    mass = (g - layer.gate()).abs()
    with torch.no_grad():
        b_norm = _layer(tau=tau).lora_B.norm(dim=0)  # B as before hardening zeroed its tail
    bound = layer.scaling() * (mass * b_norm * h_a.abs()).sum(dim=1)
    diff = (soft - hard).norm(dim=1)
    assert torch.all(diff <= bound + 1e-5)
    if tau == 0.02:
        assert mass.sum() < 1e-4 and diff.max() < 1e-3


@pytest.mark.parametrize("sqrt_scaling", [False, True])
def test_hardening_keeps_the_kept_components_output_exactly(sqrt_scaling):
    """The gate of a kept component (and the sqrt scaling's change) is folded into B: only
    the closed components' output is lost, however soft the gates were."""
    layer = _layer(rho=3.3, tau=0.8)
    layer.sqrt_scaling = sqrt_scaling
    x = torch.randn(5, 10)
    with torch.no_grad():
        g, s = layer.gate(), layer.scaling()
        soft = layer(x)
        rank = layer.current_hard_rank()
        closed = ((x @ layer.lora_A[rank:].T) * g[rank:] * s) @ layer.lora_B[:, rank:].T
        layer.harden()
        assert 0 < rank < layer.r_max and float(g[0]) < 0.99  # a soft gate was kept
        assert torch.allclose(layer(x), soft - closed, atol=1e-5)


def test_gate_is_nested_and_soft_rank_tracks_rho():
    layer = _layer(r_max=8, rho=4.0, tau=1.0)
    g = layer.gate()
    assert torch.all(g[1:] <= g[:-1])
    assert layer.soft_rank().item() == pytest.approx(4.0, abs=1e-5)  # symmetric around rho
    assert layer.current_hard_rank() == 4


def test_rebalance_keeps_output_when_gates_open_and_orders_components():
    layer = _layer(r_max=6, rho=6.0, tau=1e-3)  # every gate open
    x = torch.randn(9, 10)
    before = layer(x).detach()
    delta = layer.delta_weight().detach()
    layer.rebalance()
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-4)
    after = layer.delta_weight().detach()
    s = layer.scaling()
    best = torch.linalg.svdvals(delta / s)
    for r in range(7):
        # truncating the re-balanced factors loses no more than truncating the old ones ...
        dropped_after = (after - s * layer.lora_B[:, :r] @ layer.lora_A[:r]).detach().norm()
        assert dropped_after <= _dropped_before(delta, s, r, layer) + 1e-4
        # ... and exactly what the best rank-r approximation loses
        assert dropped_after == pytest.approx(best[r:].norm().item() * s, rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("exact", [False, True])
def test_rebalance_under_soft_gates_keeps_output_only_when_exact(exact):
    layer = _layer(r_max=6, rho=3.5, tau=1.0)  # gates 0.95 .. 0.12: soft, all above 0.1
    x = torch.randn(9, 10)
    before = layer(x).detach()
    layer.rebalance(exact=exact)
    change = (layer(x) - before).norm() / (before - layer.base(x)).norm()
    if exact:
        assert change < 1e-5
    else:  # the forward gates the re-balanced factors a second time
        assert change > 0.05


def _dropped_before(delta, s, r, layer):
    torch.manual_seed(0)
    layer_before = _layer(r_max=6, rho=6.0, tau=1e-3)  # the same factors as before rebalance
    kept = s * layer_before.lora_B[:, :r] @ layer_before.lora_A[:r]
    return (delta - kept.detach()).norm()


def test_harden_rejects_impossible_rank():
    with pytest.raises(ValueError, match="hard rank must be in"):
        _layer().harden(rank=99)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ref_rank": "four"}, "ref_rank must be a number positive and finite, got 'four'"),
        ({"ref_rank": 0}, "ref_rank must be a number positive"),
        ({"alpha": float("nan")}, "alpha must be a number finite, got nan"),
        ({"init_rank": 9}, r"init_rank must be a number in \[0, r_max=4\]"),
        ({"r_max": 2.5}, "r_max must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ],
)
def test_a_layer_refuses_arguments_that_are_not_numbers_in_range(overrides, message):
    settings = dict(r_max=4, init_rank=2, alpha=8.0, ref_rank=4) | overrides
    with pytest.raises(ValueError, match=message):
        LRLoRALinear(nn.Linear(8, 8), **settings)


def test_spectrum_is_the_singular_values_of_the_gated_update():
    torch.manual_seed(0)
    layer = LRLoRALinear(nn.Linear(20, 30), r_max=6, init_rank=3.3, alpha=6, ref_rank=6)
    nn.init.normal_(layer.lora_B)
    expected = torch.linalg.svdvals(layer.delta_weight().detach().double())[:6]
    torch.testing.assert_close(layer.spectrum().double(), expected, rtol=1e-4, atol=1e-5)


def test_sensitivity_is_the_empirical_fisher_of_each_gate():
    """sum_n (dL_n/dg_k)^2 with examples of several tokens, checked against the gate's
    derivative written out: dL_n/dg_k = s * sum_t (dL/dy_t . b_k)(a_k . x_t)."""
    torch.manual_seed(0)
    layer = LRLoRALinear(nn.Linear(5, 4), r_max=3, init_rank=2.2, alpha=3, ref_rank=3)
    nn.init.normal_(layer.lora_B)
    layer.sensitivity = torch.zeros(3)
    x = torch.randn(2, 7, 5)  # 2 examples of 7 tokens
    target = torch.randn(2, 7, 4)
    y = layer(x)
    dy = torch.autograd.grad((y - target).pow(2).sum(), y, retain_graph=True)[0]
    (y - target).pow(2).sum().backward()
    s = layer.scaling()
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    per_example = s * torch.einsum("ntd,dk,ntk->nk", dy, b, x @ a.T)  # (n, R)
    torch.testing.assert_close(layer.sensitivity, per_example.square().sum(0), rtol=1e-4, atol=1e-6)
