import json
import math

import pytest
import torch
from torch import nn

import lrlora
from lrlora.app import demo
from tiny import bert_config, random_batches, tiny_bert


def _train(model, steps, accumulate=1, seed=0, call_step=True, hooked=True, **controller_kw):
    """Train ``steps`` optimizer steps; ``call_step``: the loop calls controller.step() after
    each; ``hooked``: the controller is built with the optimizer (else without, by hand)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(
        model, optimizer if hooked else None, total_steps=steps, **controller_kw
    )
    for tokens, labels in random_batches(steps, seed=seed):
        for chunk in range(accumulate):
            part = slice(chunk * 4 // accumulate, (chunk + 1) * 4 // accumulate)
            (model(tokens[part], labels=labels[part]).loss / accumulate).backward()
        optimizer.step()
        if call_step:
            controller.step()
        optimizer.zero_grad()
    return controller


def test_a_loop_without_controller_step_anneals_and_projects_as_one_that_calls_it():
    """The controller steps itself after every optimizer.step(); a loop's own call after it
    does nothing, so both loops end with the same schedule, ranks and state."""
    config = bert_config(init_rank=4, rank_lr=0.2)
    called = _train(lrlora.inject(tiny_bert(), config), steps=8)
    plain = _train(lrlora.inject(tiny_bert(), config), steps=8, call_step=False)
    assert plain.step_count == called.step_count == 8
    assert plain.tau == called.tau == pytest.approx(config.tau_end)
    assert plain.allowance == called.allowance == plain.target_params < plain.initial_params
    assert plain.soft_ranks() == called.soft_ranks()
    assert plain.state_dict() == called.state_dict()
    assert all(int(layer.steps) == 8 for layer in plain.layers)
    assert any(rank != 4.0 for rank in plain.soft_ranks().values())  # the ranks moved


def test_the_hook_steps_the_controller_where_a_call_by_hand_did():
    """With rho left to the optimizer (and no re-balancing, which resets its moments), a
    controller built without it and stepped by hand after every optimizer.step() ends where
    the self-stepping one does."""
    config = bert_config(init_rank=4, rank_lr=0.2, rank_update="optimizer", rebalance_every=0)
    hooked = _train(lrlora.inject(tiny_bert(), config), steps=8, call_step=False)
    by_hand = _train(lrlora.inject(tiny_bert(), config), steps=8, hooked=False)
    assert by_hand.step_count == hooked.step_count == 8
    assert by_hand.soft_ranks() == hooked.soft_ranks()
    assert by_hand.state_dict() == hooked.state_dict()
    assert torch.equal(by_hand._rhos(), hooked._rhos())


def test_calling_step_after_the_optimizer_stepped_does_not_step_twice():
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=4)
    controller.step()  # no optimizer step yet: nothing to count
    assert controller.step_count == 0
    for tokens, labels in random_batches(3):
        model(tokens, labels=labels).loss.backward()
        optimizer.step()
        tau, rhos = controller.tau, controller._rhos()
        controller.step()
        controller.step()
        assert controller.tau == tau and torch.equal(controller._rhos(), rhos)
        optimizer.zero_grad()
    assert controller.step_count == 3


def test_an_optimizer_step_the_grad_scaler_skips_is_not_counted():
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=4)
    scaler = torch.amp.GradScaler("cpu")
    for step, (tokens, labels) in enumerate(random_batches(3)):
        scaler.scale(model(tokens, labels=labels).loss).backward()
        if step == 1:  # an overflow: the scaler does not call optimizer.step()
            controller.layers[0].lora_A.grad[0, 0] = float("inf")
            tau, rhos = controller.tau, controller._rhos()
        scaler.step(optimizer)
        scaler.update()
        controller.step()
        optimizer.zero_grad()
        if step == 1:
            assert controller.step_count == 1
            assert controller.tau == tau and torch.equal(controller._rhos(), rhos)
    assert controller.step_count == 2


def test_budget_holds_during_training_and_after_hardening():
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4, rank_lr=0.2))
    controller = _train(model, steps=20)
    assert controller.summary()["soft_params"] <= controller.allowance * (1 + 1e-6)
    ranks = controller.harden()
    budget = sum(2 * layer.cost_per_rank for _, layer in lrlora.lora_layers(model))
    assert controller.adapter_params() <= budget
    assert (
        sum(
            r * layer.cost_per_rank
            for r, (_, layer) in zip(ranks.values(), lrlora.lora_layers(model), strict=True)
        )
        <= budget
    )
    assert all(0 <= layer.rho.item() <= 4 for _, layer in lrlora.lora_layers(model))


def test_penalty_mode_shrinks_ranks_and_accumulation_does_not_multiply_it():
    def final_rhos(accumulate):
        torch.manual_seed(0)
        student, teacher = demo.make_problem((1, 2, 4), d=16, seed=0)
        config = lrlora.LRLoRAConfig(
            target_modules=r"layers\.\d+",
            r_max=6,
            rank_mode="penalty",
            rank_update="shared",
            scaling="max",
            penalty=5.0,
            rank_lr=0.1,
            rebalance_every=0,
        )
        lrlora.inject(student, config)
        optimizer = torch.optim.Adam(lrlora.optimizer_groups(student, lr=1e-2))
        controller = lrlora.RankController(student, optimizer, total_steps=30)
        gen = torch.Generator().manual_seed(0)
        for _ in range(30):
            x = torch.randn(8, 16, generator=gen)
            for part in x.chunk(accumulate):
                ((student(part) - teacher(part)).pow(2).mean() / accumulate).backward()
            optimizer.step()
            controller.step()
            optimizer.zero_grad()
        return torch.stack([layer.rho.detach() for _, layer in lrlora.lora_layers(student)])

    one, four = final_rhos(1), final_rhos(4)
    assert torch.all(one < 6.0)  # the penalty pulled every rank down from the ceiling
    torch.testing.assert_close(one, four, atol=1e-4, rtol=0)


def test_hardening_without_steps_is_an_error():
    model = lrlora.inject(tiny_bert(), bert_config())
    controller = lrlora.RankController(model, None, total_steps=10)
    with pytest.raises(lrlora.ControllerNotSteppedError, match="never stepped"):
        controller.harden()


def test_state_dict_round_trip_restores_schedule():
    model = lrlora.inject(tiny_bert(), bert_config())
    controller = _train(model, steps=6)
    state = controller.state_dict()
    fresh = lrlora.RankController(model, None, total_steps=6)
    fresh.load_state_dict(state)
    assert fresh.step_count == 6 and fresh.tau == controller.tau
    assert fresh.allowance == controller.allowance and fresh.lam == controller.lam
    assert all(
        layer.tau.item() == pytest.approx(fresh.tau) for _, layer in lrlora.lora_layers(model)
    )
    with pytest.raises(ValueError, match="same total_steps"):
        lrlora.RankController(model, None, total_steps=7).load_state_dict(state)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step_count": -3}, r"step_count is -3, outside \[0, 6\]"),
        ({"step_count": "6"}, r"\['step_count'\] is '6', not an integer"),
        ({"target_params": 1e12}, "target_params is 1000000000000.0, but the budget of this"),
        ({"initial_params": float("nan")}, r"\['initial_params'\] is nan, not a finite number"),
        ({"initial_params": 1e12}, r"initial_params is 1000000000000.0, outside \[0, 3584\]"),
        ({"rank_moments": {"t": 6, "m": [0.0], "v": 1.0}}, "rank_moments hold 1 layers, this"),
        ({"rank_moments": {"t": 6, "m": [0.0] * 12, "v": -1.0}}, "rank_moments.v is -1.0"),
        ({"total_steps": 60}, "resume with the same total_steps"),
    ],
)
def test_a_tampered_controller_json_is_refused_naming_it(tmp_path, change, message):
    model = lrlora.inject(tiny_bert(), bert_config())
    controller = _train(model, steps=6)
    lrlora.save(model, tmp_path / "ckpt", controller=controller)
    file = tmp_path / "ckpt" / "controller.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **change}))
    fresh = lrlora.RankController(model, None, total_steps=6)
    with pytest.raises(lrlora.BadFileError, match=message) as caught:
        lrlora.resume(tmp_path / "ckpt", model, controller=fresh)
    assert caught.value.path == file and fresh.step_count == 0  # nothing was loaded


def test_hardening_keeps_the_config_budget_whatever_state_was_loaded():
    """The budget is computed from the config, never read from state: with every gate open
    and the schedule's state pushed up, the hardened adapter still fits."""
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4))
    controller = _train(model, steps=4)
    budget = sum(2 * layer.cost_per_rank for _, layer in lrlora.lora_layers(model))
    assert controller.target_params == budget
    with pytest.raises(AttributeError):
        controller.target_params = 1e12
    controller.initial_params = controller.max_params
    with torch.no_grad():
        for _, layer in lrlora.lora_layers(model):
            layer.rho.fill_(layer.r_max)
    controller.harden()
    assert 0 < controller.adapter_params() <= budget


def test_teacher_student_ranks_come_out_ordered_like_the_truth():
    rows = demo.run(true_ranks=(1, 3, 6), d=16, r_max=8, steps=250, show=False)
    ranks = [row["hard_rank"] for row in rows]
    assert ranks[0] < ranks[1] < ranks[2], ranks
    assert sum(row["params"] for row in rows) <= 10 * 32  # budget: 10 ranks of 16 + 16


def test_budget_is_filled_not_only_capped():
    """With fill_budget the soft size sits on the allowance; as a cap it may fall below."""
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=2, rank_lr=0.2))
    controller = _train(model, steps=6)
    summary = controller.summary()
    assert summary["soft_params"] == pytest.approx(controller.allowance, rel=1e-6)
    with torch.no_grad():
        for _, layer in lrlora.lora_layers(model):
            layer.rho.sub_(1.0)  # give rank away; the next step hands it back
    controller.optimizer.zero_grad()
    controller.optimizer.step()
    assert controller.summary()["soft_params"] == pytest.approx(controller.allowance, rel=1e-6)
    assert controller.lam < 0  # the shift went up


@pytest.mark.parametrize("fill", [True, False])
def test_projection_finds_the_shift_a_bisection_finds(fill):
    """The vectorised grid search (no host reads, so a GPU step never waits) lands on the
    same shift as 60 halvings of [-bound, bound] would."""
    model = lrlora.inject(tiny_bert(), bert_config(r_max=8, budget_rank=4, fill_budget=fill))
    controller = lrlora.RankController(model, None, total_steps=10)
    rhos = torch.rand(len(controller.layers), generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64) * 8  # fmt: skip
    tau = 0.3
    weights = controller.weights
    cost = lambda delta: controller._soft_cost((rhos - delta * weights).clamp(0, 8), tau)  # noqa: E731
    for budget in (0.3 * cost(0.0), 0.9 * cost(0.0), 1.2 * cost(0.0)):
        lo, hi = -8 / float(weights.min()), 8 / float(weights.min())
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cost(mid) > budget else (lo, mid)
        want = hi if fill or cost(0.0) > budget else 0.0
        projected = controller._project(rhos, tau, budget)
        assert controller.last_shift == pytest.approx(want, abs=1e-9)
        expected = (rhos - want * weights).clamp(0, 8)
        torch.testing.assert_close(projected, expected, atol=1e-8, rtol=0)
        if want != 0.0:
            assert controller._soft_cost(projected, tau) == pytest.approx(budget, rel=1e-8)


def _updated_rhos(model, optimizer) -> list[torch.Tensor]:
    """Every rho after each optimizer step's own update, before the controller's step (its
    post-step hook, which runs after this one if the controller is built after this call)."""
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    seen = []
    optimizer.register_step_post_hook(
        lambda *_: seen.append(torch.stack([layer.rho.detach().clone() for layer in layers]))
    )
    return seen


def _rank_gradients(model, values):
    for (_, layer), value in zip(lrlora.lora_layers(model), values, strict=False):
        layer.rho.grad = torch.tensor(float(value))


def test_shared_rank_update_keeps_the_layers_gradients_in_proportion():
    """Adam per rho would move every layer by lr whatever its gradient; the shared
    normaliser moves each rho in proportion to its gradient (the first step: m and v are
    one gradient, so the update is lr * g / rms(g))."""
    model = lrlora.inject(tiny_bert(), bert_config(rank_update="shared", rank_lr=0.1))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    updated = _updated_rhos(model, optimizer)
    lrlora.RankController(model, optimizer, total_steps=10)
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    before = torch.stack([layer.rho.detach().clone() for layer in layers])
    grads = torch.linspace(-1.0, 3.0, len(layers))
    _rank_gradients(model, grads)
    optimizer.step()
    moved = updated[-1] - before
    expected = -0.1 * grads / grads.square().mean().sqrt()
    torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-6)
    assert all(layer.rho.grad is None for layer in layers)  # consumed: AdamW left rho alone
    assert not any(layer.rho in optimizer.state for layer in layers)


def test_the_even_projection_shifts_every_rho_alike_and_weighs_gradients_by_cost():
    """projection='even': the budget shifts every rho by the same delta, and the shared
    update moves each rho by its gradient per unit of cost (the same fixed point as 'cost':
    equal loss decrease per parameter)."""
    model = lrlora.inject(tiny_bert(), bert_config(rank_lr=0.1, projection="even"))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    updated = _updated_rhos(model, optimizer)
    controller = lrlora.RankController(model, optimizer, total_steps=10)
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    assert torch.all(controller.weights == 1.0)
    rhos = torch.linspace(1.5, 3.5, len(layers), dtype=torch.float64)  # r_max 4
    projected = controller._project(rhos, 0.3, 0.8 * controller._soft_cost(rhos, 0.3))
    assert torch.allclose(rhos - projected, torch.full_like(rhos, controller.last_shift))
    costs = torch.tensor([float(layer.cost_per_rank) for layer in layers])
    assert costs.unique().numel() > 1  # attention and MLP layers cost differently
    before = torch.stack([layer.rho.detach().clone() for layer in layers])
    grads = torch.linspace(-1.0, 3.0, len(layers))
    _rank_gradients(model, grads)
    optimizer.step()
    moved = updated[-1] - before
    per_cost = grads / (costs / costs.mean())
    torch.testing.assert_close(
        moved, -0.1 * per_cost / per_cost.square().mean().sqrt(), rtol=1e-5, atol=1e-6
    )


def test_optimizer_rank_update_leaves_rho_to_adam():
    model = lrlora.inject(tiny_bert(), bert_config(rank_update="optimizer", rank_lr=0.1))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    updated = _updated_rhos(model, optimizer)
    lrlora.RankController(model, optimizer, total_steps=10)
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    before = torch.stack([layer.rho.detach().clone() for layer in layers])
    _rank_gradients(model, torch.linspace(0.5, 3.0, len(layers)))
    optimizer.step()
    moved = updated[-1] - before
    torch.testing.assert_close(moved, torch.full_like(moved, -0.1), rtol=1e-4, atol=1e-6)


def test_shared_rank_moments_survive_a_state_dict_round_trip():
    model = lrlora.inject(tiny_bert(), bert_config(rank_update="shared", rebalance_every=0))
    controller = _train(model, steps=4)
    state = controller.state_dict()
    assert state["rank_moments"]["t"] == 4
    twin = lrlora.inject(tiny_bert(), bert_config(rank_update="shared", rebalance_every=0))
    twin.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(twin, lr=1e-2))
    fresh = lrlora.RankController(twin, optimizer, total_steps=4)
    fresh.load_state_dict(json.loads(json.dumps(state)))  # as controller.json holds it
    assert fresh.state_dict() == state


def test_unknown_rank_update_is_refused():
    with pytest.raises(ValueError, match="rank_update must be 'shared', 'optimizer' or 'prune'"):
        bert_config(rank_update="sgd")


def test_a_second_controller_on_one_optimizer_is_refused_until_the_first_is_closed():
    model = lrlora.inject(tiny_bert(), bert_config())
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    first = lrlora.RankController(model, optimizer, total_steps=5)
    with pytest.raises(ValueError, match="already drives a RankController"):
        lrlora.RankController(model, optimizer, total_steps=5)
    first.close()
    first.close()  # harmless twice
    with lrlora.RankController(model, optimizer, total_steps=5) as second:
        assert second.optimizer is optimizer
    lrlora.RankController(model, optimizer, total_steps=5).close()  # released by the `with`


def test_closing_removes_the_hooks():
    """With its hooks removed the controller no longer takes rho's gradient before the
    optimizer (the shared rank update): the optimizer moves rho itself; and it no longer
    steps after the optimizer."""
    model = lrlora.inject(tiny_bert(), bert_config(rank_update="shared"))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    with lrlora.RankController(model, optimizer, total_steps=5) as controller:
        pass
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    for layer in layers:
        layer.rho.grad = torch.tensor(1.0)
    optimizer.step()
    assert all(layer.rho.grad is not None for layer in layers)
    assert all(layer.rho in optimizer.state for layer in layers)
    assert controller.step_count == 0  # nor does it step after the optimizer
    controller.step()
    assert controller.step_count == 1  # by hand, as one built without an optimizer


def test_the_controller_finds_what_it_needs_on_the_adapters_through_a_wrapper():
    """inject pins nothing on the user's model; a wrapper (as DDP or torch.compile put
    around it) hides nothing from the controller, save or export."""
    model = lrlora.inject(tiny_bert(), bert_config())
    assert not hasattr(model, "lrlora_config") and not hasattr(model, "lrlora_reference_rank")
    wrapper = torch.nn.ModuleDict({"module": model})
    controller = lrlora.RankController(wrapper, None, total_steps=3)
    direct = lrlora.RankController(model, None, total_steps=3)
    assert controller.target_params == direct.target_params > 0
    assert controller.config is direct.config


def test_the_trainer_callback_refuses_a_controller_it_cannot_drive():
    pytest.importorskip("transformers")
    from lrlora.hf import check_reusable

    model = lrlora.inject(tiny_bert(), bert_config())
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    with lrlora.RankController(model, optimizer, total_steps=5) as controller:
        check_reusable(controller, optimizer, 5)
        with pytest.raises(ValueError, match="plans 5 steps but the Trainer will take 8"):
            check_reusable(controller, optimizer, 8)
        other = torch.optim.SGD(lrlora.optimizer_groups(model, lr=1e-2))
        with pytest.raises(ValueError, match="hooks another optimizer"):
            check_reusable(controller, other, 5)


@pytest.mark.parametrize("signal", ["spectrum", "sensitivity"])
def test_rank_signals_move_rank_to_the_layer_that_carries_the_update(signal):
    """Two layers, one whose update matters: under a constant budget the component cost
    (squared singular value or Fisher sensitivity) moves rank from the idle layer to it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    config = lrlora.LRLoRAConfig(
        target_modules=["0", "1"],
        r_max=6,
        budget_rank=3,
        rank_update="shared",
        rank_signal=signal,
        rank_lr=0.2,
    )
    lrlora.inject(model, config)
    optimizer = torch.optim.Adam(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=60)
    teacher = torch.randn(8, 8) * 0.5
    for _ in range(60):
        x = torch.randn(32, 8)
        target = model[1].base(model[0].base(x) + x @ teacher.T)  # only layer 0 must change
        with torch.no_grad():
            model[1].lora_B.zero_()  # layer 1 learns nothing
        loss = (model(x) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    ranks = controller.harden()
    assert ranks["0"] > 3 > ranks["1"], ranks
    controller.close()
    assert all(layer.sensitivity is None for _, layer in lrlora.lora_layers(model))


def test_the_sensitivity_signal_moves_each_rho_by_its_boundary_cost():
    """First step of the shared update: rho_l rises by lr * v_l / rms(v), v_l the layer's
    accumulated sensitivity read through the boundary window; the gradient is ignored and
    the accumulators are cleared."""
    model = lrlora.inject(tiny_bert(), bert_config(rank_signal="sensitivity", rank_lr=0.1))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    updated = _updated_rhos(model, optimizer)
    controller = lrlora.RankController(model, optimizer, total_steps=10)
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    for i, layer in enumerate(layers):
        layer.sensitivity.fill_(float(i + 1))  # the same cost on every component
        layer.rho.grad = torch.tensor(-100.0)  # ignored under this signal
    before = torch.stack([layer.rho.detach().clone() for layer in layers])
    optimizer.step()
    moved = updated[-1] - before
    values = torch.arange(1.0, len(layers) + 1)
    torch.testing.assert_close(moved, 0.1 * values / values.square().mean().sqrt())
    assert all(float(layer.sensitivity.abs().sum()) == 0 for layer in layers)
    controller.close()


@pytest.mark.parametrize("moments", ["reset", "rescale"])
def test_rebalancing_resets_or_rescales_the_moments_of_the_rewritten_factors(moments):
    torch.manual_seed(0)
    model = lrlora.inject(tiny_bert(), bert_config(rebalance_every=2, rebalance_moments=moments))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    layer = next(layer for _, layer in lrlora.lora_layers(model))
    updated = []  # B's moments after each update, before the controller's post-step hook
    optimizer.register_step_post_hook(
        lambda *_: updated.append({k: v.clone() for k, v in optimizer.state[layer.lora_B].items()})
    )
    controller = lrlora.RankController(model, optimizer, total_steps=10)
    for tokens, labels in random_batches(2):
        model(tokens, labels=labels).loss.backward()
        optimizer.step()  # the second re-balances
        optimizer.zero_grad()
    assert controller.step_count == 2
    before = updated[-1]
    state = optimizer.state.get(layer.lora_B)
    if moments == "reset":
        assert not state
        return
    assert int(state["step"]) == int(before["step"])  # Adam's bias correction goes on
    assert torch.count_nonzero(state["exp_avg"]) == 0
    # the second moment is even along the components (B's columns), with each row's mean kept
    second = state["exp_avg_sq"]
    assert torch.allclose(second, second[:, :1].expand_as(second))
    assert torch.allclose(second.mean(1), before["exp_avg_sq"].mean(1))


def test_the_controller_hardens_at_harden_at_and_then_trains_the_fixed_adapter():
    torch.manual_seed(0)
    model = lrlora.inject(tiny_bert(), bert_config(harden_at=0.5))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=8)
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    seen = []
    for tokens, labels in random_batches(8):
        model(tokens, labels=labels).loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
        seen.append((controller.hardened, [float(layer.rho) for layer in layers]))
    assert [hardened for hardened, _ in seen] == [False] * 3 + [True] * 5
    assert all(rhos == seen[3][1] for _, rhos in seen[3:])  # the ranks stay where they were
    assert controller.adapter_params() <= controller.target_params
    b_before = layers[0].lora_B.detach().clone()
    ranks = controller.harden()  # the end of training: nothing left to change
    assert ranks == controller.hard_ranks() and torch.equal(layers[0].lora_B, b_before)


def _planted_pair(seed=0):
    """Two 8 -> 8 layers in sequence; the target changes only the first, by a rank-2 delta."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    u, v = torch.randn(8, 2), torch.randn(8, 2)
    delta = u @ v.T * 0.3
    probes = [torch.randn(32, 8) for _ in range(lrlora.RankController.PROBE_BATCHES)]

    def target(x):
        with torch.no_grad():
            return model[1].base(model[0].base(x) + x @ delta.T)

    return model, target, probes


def test_prune_trains_lora_at_the_ceiling_then_keeps_the_components_the_loss_needs():
    """rank_update='prune': until harden_at every gate is exactly open and rho stays put
    (LoRA at rank R); at harden_at the budget's 2 ranks go to the layer that must change,
    within the budget, and the rest trains the kept components only."""
    model, target, probes = _planted_pair()
    config = lrlora.LRLoRAConfig(
        target_modules=["0", "1"], r_max=4, budget_rank=1, rank_update="prune", harden_at=0.5
    )
    lrlora.inject(model, config)
    optimizer = torch.optim.Adam(lrlora.optimizer_groups(model, lr=2e-2))
    probe = lambda i: (model(probes[i]) - target(probes[i])).pow(2).mean()  # noqa: E731
    controller = lrlora.RankController(model, optimizer, total_steps=120, probe=probe)
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    for step in range(120):
        x = torch.randn(32, 8)
        (model(x) - target(x)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 58:  # the last step before pruning
            assert all(torch.equal(layer.gate(), torch.ones(4)) for layer in layers)
            assert all(float(layer.rho) == 4.0 for layer in layers)
            assert not controller.hardened
    assert controller.hardened
    ranks = controller.hard_ranks()
    assert ranks == {"0": 2, "1": 0}, ranks
    assert controller.adapter_params() <= controller.target_params
    assert not torch.any(layers[0].lora_B[:, 2:]) and not torch.any(layers[1].lora_B)
    x = torch.randn(256, 8)
    assert (model(x) - target(x)).pow(2).mean() < 0.05 * (
        model[1].base(model[0].base(x)) - target(x)
    ).pow(2).mean()


def test_two_stage_pruning_first_keeps_twice_the_budget_then_the_budget():
    """prune_stages=2: at 5/8 of harden_at the controller keeps the most valuable components
    up to twice the budget and closes the rest (rho = the kept count, gates 1 below it and
    0 above); at harden_at it cuts to the budget, and the rank still goes where it must."""
    model, target, probes = _planted_pair()
    config = lrlora.LRLoRAConfig(target_modules=["0", "1"], r_max=4, budget_rank=1,
                                 rank_update="prune", harden_at=0.5, prune_stages=2)  # fmt: skip
    lrlora.inject(model, config)
    optimizer = torch.optim.Adam(lrlora.optimizer_groups(model, lr=2e-2))
    probe = lambda i: (model(probes[i]) - target(probes[i])).pow(2).mean()  # noqa: E731
    controller = lrlora.RankController(model, optimizer, total_steps=120, probe=probe)
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    assert controller.first_cut_step == 38  # 5/8 of the 60 steps before harden_at
    for step in range(1, 121):
        x = torch.randn(32, 8)
        (model(x) - target(x)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 37:
            assert all(torch.equal(layer.gate(), torch.ones(4)) for layer in layers)
        if step == 38:
            kept = [int(layer.rho) for layer in layers]
            cost = sum(k * layer.cost_per_rank for k, layer in zip(kept, layers, strict=True))
            assert controller.target_params < cost <= 2 * controller.target_params
            for k, layer in zip(kept, layers, strict=True):
                assert torch.equal(layer.gate(), (torch.arange(4) < k).float())
                assert not torch.any(layer.lora_B[:, k:])
            assert not controller.hardened
    assert controller.hard_ranks() == {"0": 2, "1": 0}
    assert controller.adapter_params() <= controller.target_params


def _pruned_pair(prune_scaling):
    """The planted pair pruned at step 10 of 20 under ``prune_scaling``: (ranks, output on a
    probe batch, the first layer's scaling) right after pruning."""
    model, target, probes = _planted_pair()
    config = lrlora.LRLoRAConfig(target_modules=["0", "1"], r_max=4, budget_rank=1, alpha=2.0,
                                 rank_update="prune", harden_at=0.5,
                                 prune_scaling=prune_scaling)  # fmt: skip
    lrlora.inject(model, config)
    optimizer = torch.optim.Adam(lrlora.optimizer_groups(model, lr=2e-2))
    probe = lambda i: (model(probes[i]) - target(probes[i])).pow(2).mean()  # noqa: E731
    controller = lrlora.RankController(model, optimizer, total_steps=20, probe=probe)
    torch.manual_seed(1)
    for _ in range(10):
        x = torch.randn(32, 8)
        (model(x) - target(x)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert controller.hardened
    with torch.no_grad():
        return controller.hard_ranks(), model(probes[0]), model[0].scaling()


def test_prune_scaling_between_speeds_up_the_kept_components_and_keeps_their_output():
    """prune_scaling='between': pruning keeps the same components with the same output as
    'ceiling', then trains them at s = alpha / sqrt(R x budget rank) (B rescaled there)."""
    ceiling, between = _pruned_pair("ceiling"), _pruned_pair("between")
    assert between[0] == ceiling[0]
    torch.testing.assert_close(between[1], ceiling[1])
    assert ceiling[2] == pytest.approx(2.0 / 4)
    assert between[2] == pytest.approx(2.0 / math.sqrt(4 * 1))


def test_a_components_value_is_what_the_loss_gains_from_it_at_its_best_scale():
    """On one linear layer under squared error the loss is quadratic in each gate factor and
    (after the SVD re-factoring) the components do not interact, so the measured value must
    equal what direct evaluations give: (L(0) - L(best scale)) for every component."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    lrlora.inject(model, lrlora.LRLoRAConfig(target_modules=["0"], r_max=3, budget_rank=1,
                                            rank_update="prune", harden_at=0.5))  # fmt: skip
    layer = model[0]
    with torch.no_grad():
        layer.lora_B.normal_()
    xs = [torch.randn(16, 6) for _ in range(lrlora.RankController.PROBE_BATCHES)]
    targets = [torch.randn(16, 5) for _ in xs]

    def probe(i):
        return (model(xs[i]) - targets[i]).pow(2).mean()

    controller = lrlora.RankController(model, total_steps=10, probe=probe)
    layer.rebalance()
    values = controller.component_values()[0]

    def total(factor):
        layer.probe_gate = factor
        with torch.no_grad():
            return sum(float(probe(i)) for i in range(len(xs)))

    for i in range(3):
        scales = torch.linspace(-1, 3, 4001)
        losses = [total(torch.ones(3).index_fill(0, torch.tensor([i]), float(c))) for c in scales]
        best = min(losses)
        without = total(torch.ones(3).index_fill(0, torch.tensor([i]), 0.0))
        assert float(values[i]) == pytest.approx(without - best, rel=1e-3, abs=1e-6)
    layer.probe_gate = None


def test_prune_without_a_probe_is_refused_saying_how_to_give_one():
    model, _, _ = _planted_pair()
    config = lrlora.LRLoRAConfig(
        target_modules=["0", "1"], r_max=4, budget_rank=1, rank_update="prune", harden_at=0.5
    )
    lrlora.inject(model, config)
    controller = lrlora.RankController(model, total_steps=40)
    with pytest.raises(ValueError, match="has no probe: build it with probe=fn"):
        controller.step()  # the first step says so, not the one at harden_at


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"harden_at": 1.0}, "needs harden_at < 1"),
        ({"rank_mode": "penalty"}, "choose rank_update='shared' or 'optimizer'"),
        ({"prune_stages": 3}, "prune_stages must be 1 or 2"),
        ({"harden_at": 0.5, "init_rank": 2.5}, "init_rank must be a whole number"),
    ],
)
def test_prune_settings_it_cannot_use_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        lrlora.LRLoRAConfig(target_modules=["0"], r_max=4, budget_rank=1, rank_update="prune",
                            **fields)  # fmt: skip


def test_the_most_valuable_components_per_parameter_are_kept_within_the_budget():
    from lrlora.budget import most_valuable

    values = [[9.0, 4.0, 0.5], [3.0, 2.9, -1.0], [0.0, 0.0, 0.0]]
    costs = [2, 1, 1]  # per parameter: 4.5, 2, 0.25 | 3, 2.9, - | -
    assert most_valuable(values, costs, 5) == [
        [0],
        [0, 1],
        [],
    ]  # 4.5, 3, 2.9; then 2 (cost 2) no longer fits
    assert most_valuable(values, costs, 6) == [[0, 1], [0, 1], []]
    assert most_valuable(values, costs, 100) == [[0, 1, 2], [0, 1], []]  # never a worthless one
