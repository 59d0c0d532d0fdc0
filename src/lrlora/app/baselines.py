"""LoRA, AdaLoRA, DoRA and the hand allocation through the peft library, at a parameter
budget matched to LR-LoRA.

The budget is "LoRA at rank r on the same target modules": ``r * (d_in + d_out)`` summed
over the adapted layers (``lora_budget_params``).

- LoRA:    ``W0 x + (alpha / r) B A x`` with ``r = budget_rank``.
- DoRA:    LoRA plus a learned magnitude vector m (d_out) per layer:
           ``m * (W0 + (alpha / r) B A) / ||W0 + (alpha / r) B A||_col``.
- AdaLoRA: ``W0 x + (alpha / init_r) P diag(E) Q x`` with ``init_r = ceil(1.5 * budget_rank)``
           triplets per layer, pruned by importance on a cubic schedule down to
           ``target_r = budget_rank`` triplets per layer on average (paper: Zhang et al. 2023).
- hand:    LoRA with a fixed rank r_l per layer (:mod:`lrlora.app.allocation`: growing with
           depth, more for the MLP) costing the budget: peft's ``rank_pattern``, with an
           ``alpha_pattern`` that gives every layer LoRA's scaling.

Default ``lora_alpha``: the scaling peft applies is 2 for every method, i.e.
``lora_alpha = 2 * budget_rank`` for LoRA and DoRA and ``2 * r_l`` for each layer of the hand
allocation (a given ``lora_alpha`` sets its scaling to ``lora_alpha / budget_rank``). AdaLoRA
divides by its initial rank ``init_r`` (peft's ``ranknum``), not by the budget rank, so its
default is ``lora_alpha = 2 * init_r`` to give the same scaling of 2.

AdaLoRA only prunes if ``update_and_allocate`` runs after every optimizer step, before the
gradients are zeroed (its importance scores are ``|p * grad|``): call ``adalora_step`` in a
plain loop, or pass ``peft_callbacks(...)`` to a transformers ``Trainer``.

peft and transformers are imported inside the functions; importing this module needs torch.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..inject import matches
from ..layer import is_adaptable
from .allocation import hand_ranks

METHODS = ("lora", "adalora", "dora", "hand")
SCALING = 2.0  # alpha / r for every method (see module docstring)
ADALORA_INIT_FACTOR = 1.5  # init_r = ceil(1.5 * target_r), the AdaLoRA paper's convention
ADALORA_TINIT_FRAC = 0.1  # warm-up without pruning: first 10% of the steps
ADALORA_TFINAL_FRAC = 0.2  # ranks frozen (final fine-tuning): last 20% of the steps
ADALORA_DELTA_T = 1  # re-allocate every step during the decay
ADALORA_ORTH_REG_WEIGHT = 0.0
"""Weight of AdaLoRA's orthogonality penalty on P and Q (peft's default is 0.5, the paper's
GLUE runs use 0.1). Off here: in our schedules of a few hundred AdamW steps it stops AdaLoRA
from learning. The task loss has no gradient on P and Q while E is still 0, so Adam moves
them by about the learning rate per element along the penalty alone and the adapter
overshoots. On SST-2 (MiniLM, 100 steps at lr 2e-3, validation slice) AdaLoRA scored 58.1
(the majority class) with weight 0.5 and with 0.1, and 82.6 with 0 (docs/ABLATIONS.md)."""


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def _layer_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear (weight d_out x d_in) or Conv1D (weight d_in x d_out)."""
    d0, d1 = module.weight.shape
    return (d1, d0) if isinstance(module, nn.Linear) else (d0, d1)


def _no_match_error(model: nn.Module, target_modules: list[str] | str) -> ValueError:
    import difflib

    names = [n for n, m in model.named_modules() if is_adaptable(m)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    probes = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    scored = {c for p in probes for c in difflib.get_close_matches(p, leaves + names, n=5)}
    return ValueError(
        f"target_modules={target_modules!r} matched no Linear/Conv1D layer in "
        f"{type(model).__name__}; closest names: {sorted(scored)[:5] or leaves[:5]}"
    )


def target_layers(model: nn.Module, target_modules: list[str] | str) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of every Linear / transformers Conv1D layer whose name matches
    ``target_modules`` with peft's rules (a str is a regex that must match the full name; a
    list entry matches the full name or a dotted suffix), by name. Other matched module types
    are ignored; a target that matches nothing is an error naming the closest layers."""
    layers = {
        name: _layer_dims(module)
        for name, module in model.named_modules()
        if name and is_adaptable(module) and matches(name, target_modules)
    }
    if not layers:
        raise _no_match_error(model, target_modules)
    if not isinstance(target_modules, str):
        unmatched = [t for t in target_modules if not any(matches(n, [t]) for n in layers)]
        if unmatched:
            raise _no_match_error(model, unmatched)
    return layers


def lora_budget_params(model: nn.Module, target_modules: list[str] | str, rank: int) -> int:
    """Adapter parameters of LoRA at rank ``rank``: ``sum_l rank * (d_in_l + d_out_l)`` over
    the :func:`target_layers`."""
    layers = target_layers(model, target_modules)
    for name, (d_in, d_out) in layers.items():
        if rank > min(d_in, d_out):
            raise ValueError(
                f"--budget-rank: rank {rank} is more than {name} can hold ({d_in} -> {d_out}: "
                f"at most {min(d_in, d_out)}); choose a budget rank <= {min(d_in, d_out)}."
            )
    return sum(rank * (d_in + d_out) for d_in, d_out in layers.values())


def adalora_schedule(total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) for AdaLoRA: prune between step tinit and total_steps - tfinal.

    peft requires ``tinit < total_steps - tfinal``; these fractions give that for any
    ``total_steps >= 1``.
    """
    return int(ADALORA_TINIT_FRAC * total_steps), int(ADALORA_TFINAL_FRAC * total_steps)


def _peft_config(
    method: str,
    budget_rank: int,
    total_steps: int | None,
    lora_alpha: float | None,
    orth_reg_weight: float = ADALORA_ORTH_REG_WEIGHT,
    **common: Any,
) -> Any:
    from peft import AdaLoraConfig, LoraConfig

    if method == "hand":
        return _hand_config(budget_rank, lora_alpha, **common)
    if method != "adalora":
        alpha = SCALING * budget_rank if lora_alpha is None else lora_alpha
        return LoraConfig(r=budget_rank, lora_alpha=alpha, use_dora=method == "dora", **common)
    if total_steps is None or total_steps < 1:
        raise ValueError(
            "AdaLoRA needs total_steps (the number of optimizer steps) for its pruning "
            f"schedule; got {total_steps!r}"
        )
    init_r = math.ceil(ADALORA_INIT_FACTOR * budget_rank)
    tinit, tfinal = adalora_schedule(total_steps)
    return AdaLoraConfig(  # no `r`: AdaLoRA ignores it and warns when it is set
        target_r=budget_rank,
        init_r=init_r,
        lora_alpha=SCALING * init_r if lora_alpha is None else lora_alpha,
        total_step=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=ADALORA_DELTA_T,
        orth_reg_weight=orth_reg_weight,
        **common,
    )


def _hand_config(
    budget_rank: int, lora_alpha: float | None, ranks: dict[str, int], **common: Any
) -> Any:
    """LoRA with ``ranks`` per layer (layers at rank 0 are left out), each at the scaling
    of LoRA at the budget rank."""
    from peft import LoraConfig

    scaling = SCALING if lora_alpha is None else lora_alpha / budget_rank
    kept = {name: rank for name, rank in ranks.items() if rank > 0}
    top = max(kept.values())
    return LoraConfig(
        **{**common, "target_modules": list(kept)},
        r=top,
        lora_alpha=scaling * top,
        rank_pattern={re.escape(name): rank for name, rank in kept.items()},
        alpha_pattern={re.escape(name): scaling * rank for name, rank in kept.items()},
    )


def make_peft_model(
    model: nn.Module,
    method: str,
    budget_rank: int,
    target_modules: list[str] | str,
    *,
    modules_to_save: list[str] | None = None,
    total_steps: int | None = None,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    task_type: str | None = None,
    seed: int | None = None,
    orth_reg_weight: float = ADALORA_ORTH_REG_WEIGHT,
) -> Any:
    """Wrap ``model`` (modified in place) in a peft LoRA / AdaLoRA / DoRA / hand model.

    Args:
        method: one of ``METHODS``.
        budget_rank: LoRA/DoRA rank; AdaLoRA's ``target_r`` (its ``init_r`` is 1.5x); the
            hand allocation's budget, ``lora_budget_params`` at this rank.
        target_modules: peft target_modules (list of names/suffixes, or one regex).
        modules_to_save: modules trained fully, e.g. ``["classifier"]``.
        total_steps: optimizer steps of the run; required for AdaLoRA.
        lora_alpha: default gives the scaling ``SCALING`` = 2 (see module docstring).
        task_type: peft task type, e.g. ``"SEQ_CLS"``. AdaLoRA adds its orthogonality
            penalty to ``outputs.loss`` only through a task-specific PeftModel; with
            ``task_type=None`` peft calls the base model directly and drops the penalty.
        seed: if given, seeds torch before the adapter weights are initialised.
        orth_reg_weight: AdaLoRA's orthogonality penalty weight (see
            ``ADALORA_ORTH_REG_WEIGHT`` for why it is 0 by default).
    """
    import torch
    from peft import get_peft_model

    _check_method(method)
    budget = lora_budget_params(model, target_modules, budget_rank)  # errors on a bad target
    hand = {}
    if method == "hand":
        hand["ranks"] = hand_ranks(target_layers(model, target_modules), budget)
    if method == "adalora" and task_type is None and orth_reg_weight > 0:
        warnings.warn(
            "AdaLoRA with task_type=None: peft skips its orthogonality regularisation; "
            "pass task_type (e.g. 'SEQ_CLS', 'CAUSAL_LM') to keep it.",
            stacklevel=2,
        )
    config = _peft_config(
        method,
        budget_rank,
        total_steps,
        lora_alpha,
        orth_reg_weight,
        target_modules=target_modules,
        lora_dropout=lora_dropout,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type=task_type,
        **hand,
    )
    if seed is not None:
        torch.manual_seed(seed)
    return get_peft_model(model, config)


def adalora_step(peft_model: Any, global_step: int) -> None:
    """Update AdaLoRA's importance scores and masks after optimizer step ``global_step``.

    ``global_step`` counts optimizer steps including this one (1 .. total_steps), so that
    the first ``tinit`` steps are warm-up and the last ``tfinal`` keep the final ranks.
    Call after ``optimizer.step()`` and before ``zero_grad()``: the scores use the grads.
    """
    from peft.tuners.adalora import AdaLoraModel

    tuner = peft_model.base_model
    if not isinstance(tuner, AdaLoraModel):
        raise TypeError(f"adalora_step needs an AdaLoRA peft model, got {type(tuner).__name__}")
    config = tuner.peft_config[tuner.trainable_adapter_name]
    if global_step < config.total_step - config.tfinal and any(
        p.grad is None
        for n, p in tuner.model.named_parameters()
        if "lora_" in n and p.requires_grad
    ):
        raise RuntimeError(
            "AdaLoRA adapter parameters have no gradient: call adalora_step after "
            "optimizer.step() and before optimizer.zero_grad()."
        )
    tuner.update_and_allocate(global_step)


def peft_callbacks(peft_model: Any, method: str) -> list:
    """transformers ``TrainerCallback``s a method needs: [] for LoRA/DoRA; for AdaLoRA one
    that calls ``adalora_step`` in ``on_optimizer_step`` (after ``optimizer.step()``, before
    ``zero_grad()`` in transformers' Trainer)."""
    _check_method(method)
    if method != "adalora":
        return []
    from transformers import TrainerCallback

    class AdaLoraCallback(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            # state.global_step counts the steps finished before this one
            adalora_step(peft_model, state.global_step + 1)

    return [AdaLoraCallback()]


def _lora_layers(peft_model: Any) -> Iterator[tuple[str, Any]]:
    """(name in the base model, peft LoRA/AdaLoRA layer) for every adapted layer."""
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _adalora_rank(name: str, layer: Any, adapter: str, rank_pattern: dict | None) -> int:
    """Triplets kept by AdaLoRA's last mask; all ``init_r`` before the first mask."""
    if not rank_pattern:
        return layer.r[adapter]
    key = f"{name}.lora_E.{adapter}"
    mask = rank_pattern[key] if key in rank_pattern else rank_pattern[f"{name}.lora_E"]
    return int(sum(mask))


def final_ranks(peft_model: Any, method: str) -> dict[str, int]:
    """Rank of each adapted layer, keyed by its name in the base model.

    LoRA/DoRA: ``r``. AdaLoRA: the number of singular-value triplets its rank pattern (the
    mask of ``lora_E``) keeps; ``init_r`` if ``update_and_allocate`` has not masked yet.
    """
    _check_method(method)
    adapter = peft_model.active_adapter
    rank_pattern = peft_model.peft_config[adapter].rank_pattern if method == "adalora" else None
    return {
        name: _adalora_rank(name, layer, adapter, rank_pattern)
        if method == "adalora"
        else layer.r[adapter]
        for name, layer in _lora_layers(peft_model)
    }


def adapter_param_counts(peft_model: Any, method: str) -> dict[str, int]:
    """Parameter counts of a peft adapter as it stands now (call it after training).

    - ``adapter``: the low-rank factors. LoRA/DoRA: numel of every ``lora_A`` and
      ``lora_B`` (= ``lora_budget_params`` at ``r``). AdaLoRA: ``k_l * (d_in + d_out)``
      summed over layers, k_l = triplets still active (``final_ranks``): pruned rows of
      P and columns of Q are not counted, though peft keeps them in memory at ``init_r``.
    - ``extras``: AdaLoRA: the ``k_l`` singular values of ``lora_E`` that remain;
      DoRA: the magnitude vectors (``d_out`` per layer); LoRA: 0.
    - ``head``: parameters of the trained copies of ``modules_to_save``.
    - ``trainable``: every parameter with ``requires_grad`` now, as allocated (AdaLoRA:
      all ``init_r`` triplets; peft's frozen ``ranknum`` excluded).
    """
    from peft.utils.other import ModulesToSaveWrapper

    _check_method(method)
    adapter = peft_model.active_adapter
    ranks = final_ranks(peft_model, method)
    counts = {"adapter": 0, "extras": 0, "head": 0, "trainable": 0}
    for name, layer in _lora_layers(peft_model):
        if method == "adalora":
            d_in, d_out = layer.lora_A[adapter].shape[1], layer.lora_B[adapter].shape[0]
            counts["adapter"] += ranks[name] * (d_in + d_out)
            counts["extras"] += ranks[name]
            continue
        factors = [*layer.lora_A[adapter].parameters(), *layer.lora_B[adapter].parameters()]
        counts["adapter"] += sum(p.numel() for p in factors)
        if method == "dora":
            counts["extras"] += layer.lora_magnitude_vector[adapter].weight.numel()
    for module in peft_model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            counts["head"] += sum(p.numel() for p in module.modules_to_save[adapter].parameters())
    counts["trainable"] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return counts
