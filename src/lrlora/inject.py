"""Putting LR-LoRA adapters into a model: target matching, wrapping, freezing."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator

from torch import nn

from .config import LRLoRAConfig
from .layer import LRLoRALinear, is_adaptable


def matches(name: str, patterns: list[str] | str | None) -> bool:
    """PEFT's matching: a str is a regex on the full name; a list entry matches the full
    name or a dotted suffix of it."""
    if not patterns:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _no_match_error(model: nn.Module, wanted: list[str] | str) -> ValueError:
    """``wanted`` (target_modules, or the entries of it that matched nothing) named with the
    model's closest linear layer names."""
    names = [n for n, m in model.named_modules() if is_adaptable(m)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    probes = [wanted] if isinstance(wanted, str) else wanted
    close = sorted({c for p in probes for c in difflib.get_close_matches(p, leaves + names, n=3)})
    return ValueError(
        f"target_modules={wanted!r} matched no linear layer in {type(model).__name__}. "
        f"Closest names found: {close or leaves[:8]}. Linear layer names in this model end "
        f"in: {leaves[:12]}."
    )


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LRLoRALinear]]:
    """(name, layer) for every LR-LoRA adapter, names as in the original model."""
    for name, module in model.named_modules():
        if isinstance(module, LRLoRALinear):
            yield name, module


def resolve_targets(model: nn.Module, config: LRLoRAConfig) -> list[str]:
    """Full names of the modules the config adapts. Errors if the model already holds an
    adapter (inject once per model), if a target is not linear or cannot hold ``r_max``
    components, or if an entry of a target list matches nothing."""
    adapted = [name for name, _ in lora_layers(model)]
    if adapted:
        raise ValueError(
            f"this model already has LR-LoRA adapters ({adapted[0]}, ...): inject once per "
            "model, with every target in one config (a second inject would freeze the first "
            "adapter and nest adapters in adapters)."
        )
    chosen = []
    for name, module in model.named_modules():
        if not name or not matches(name, config.target_modules):
            continue
        if matches(name, config.exclude_modules):
            continue
        if not is_adaptable(module):
            if isinstance(config.target_modules, str):
                continue  # a regex may also match containers; only linear layers count
            raise ValueError(
                f"target {name} is a {type(module).__name__}; LR-LoRA adapts nn.Linear and "
                "transformers' Conv1D layers only. Name the linear layers inside it instead."
            )
        _check_capacity(name, module, config.r_max)
        chosen.append(name)
    if not chosen:
        raise _no_match_error(model, config.target_modules)
    _check_every_entry_matches(model, config, chosen)
    return chosen


def _check_capacity(name: str, module: nn.Module, r_max: int) -> None:
    limit = min(module.weight.shape)
    if r_max > limit:
        raise ValueError(
            f"r_max={r_max} is more than {name} can hold: a {tuple(module.weight.shape)} weight "
            f"has rank at most {limit}. Choose r_max (and the budget rank) <= {limit}."
        )


def _check_every_entry_matches(model: nn.Module, config: LRLoRAConfig, chosen: list[str]) -> None:
    """With a list of targets, an entry that matches no chosen layer is a mistake (a typo
    would otherwise adapt fewer layers than asked, silently)."""
    if isinstance(config.target_modules, str):
        return
    unmatched = [t for t in config.target_modules if not any(matches(n, [t]) for n in chosen)]
    if unmatched:
        raise _no_match_error(model, unmatched)


def reference_rank(model: nn.Module, config: LRLoRAConfig, targets: list[str]) -> float:
    """The LoRA rank whose size equals the budget: budget_rank, or budget_params spread
    over the targets' cost per rank."""
    if config.budget_rank is not None:
        return float(config.budget_rank)
    per_rank = sum(_cost_per_rank(model.get_submodule(t)) for t in targets)
    if config.budget_params is not None:
        rank = config.budget_params / per_rank
        if rank > config.r_max:
            raise ValueError(
                f"budget_params={config.budget_params} is impossible: with r_max={config.r_max} "
                f"the targets hold at most {config.r_max * per_rank} adapter parameters; choose "
                f"a budget in [{per_rank}, {config.r_max * per_rank}] (1 to r_max ranks per layer)."
            )
        return rank
    return float(config.r_max)


def _cost_per_rank(module: nn.Module) -> int:
    return sum(module.weight.shape)


def inject(model: nn.Module, config: LRLoRAConfig) -> nn.Module:
    """Wrap every target in an :class:`LRLoRALinear`, freeze all else, unfreeze the
    ``modules_to_save``. Modifies ``model`` in place and returns it."""
    targets = resolve_targets(model, config)
    _check_saved_outside_targets(model, config, targets)
    ref = reference_rank(model, config, targets)
    init = config.init_rank or (ref if config.rank_mode == "budget" else config.r_max)
    if config.rank_update == "prune":  # LoRA at the ceiling until the controller prunes
        init = config.r_max if config.init_rank is None else config.init_rank
    soft_ref = ref if config.scaling == "budget" else config.r_max
    hard_ref = soft_ref
    if config.rank_update == "prune" and config.prune_scaling == "between":
        hard_ref = math.sqrt(soft_ref * ref)  # between the ceiling's scaling and the budget's
    for param in model.parameters():
        param.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LRLoRALinear(
            getattr(parent, child),
            r_max=config.r_max,
            init_rank=min(init, config.r_max),
            alpha=config.alpha,
            ref_rank=soft_ref,
            hard_ref_rank=hard_ref,
            dropout=config.dropout,
            sqrt_scaling=config.scaling == "sqrt",
        )
        layer.config, layer.reference_rank = config, ref  # on our layers: a wrapper hides none
        # Under 'prune' rho is not trained: frozen here, before a DDP wrapper lists the
        # parameters it expects gradients for.
        layer.rho.requires_grad_(config.rank_update != "prune")
        setattr(parent, child, layer)
    _unfreeze_saved(model, config.modules_to_save)
    return model


def _check_saved_outside_targets(
    model: nn.Module, config: LRLoRAConfig, targets: list[str]
) -> None:
    """A module trained fully must not hold an adapted layer (its frozen base weight would
    train with the adapter)."""
    for name, _ in model.named_modules():
        if name and matches(name, config.modules_to_save):
            inside = [t for t in targets if t == name or t.startswith(name + ".")]
            if inside:
                raise ValueError(
                    f"modules_to_save names {name}, which holds the target {inside[0]}: its "
                    "base weights would train with the adapter. Name modules outside the "
                    "targets (e.g. the task head)."
                )


def _unfreeze_saved(model: nn.Module, names: list[str]) -> None:
    found = set()
    for name, module in model.named_modules():
        if name and matches(name, names):
            found.update(p for p in names if name == p or name.endswith("." + p))
            for param in module.parameters():
                param.requires_grad_(True)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"modules_to_save {missing} matched no module in {type(model).__name__}.")


def _first_layer(model: nn.Module) -> LRLoRALinear:
    layer = next((layer for _, layer in lora_layers(model)), None)
    if layer is None or not isinstance(layer.config, LRLoRAConfig):
        raise ValueError("this model has no LR-LoRA adapters: call lrlora.inject(model, config).")
    return layer


def config_of(model: nn.Module) -> LRLoRAConfig:
    """The config the model's adapters were injected with (found on them, so a DDP or
    ``torch.compile`` wrapper around the model hides nothing)."""
    return _first_layer(model).config


def reference_rank_of(model: nn.Module) -> float:
    """The LoRA rank whose size equals the adapters' budget (see :func:`reference_rank`)."""
    return _first_layer(model).reference_rank


def optimizer_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """AdamW-ready groups: adapter weights and heads at ``lr``; rho at the config's
    ``rank_lr`` with no weight decay."""
    config = config_of(model)
    rhos = [layer.rho for _, layer in lora_layers(model)]
    rho_ids = {id(p) for p in rhos}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in rho_ids]
    return [
        {"params": rest, "lr": lr, "weight_decay": weight_decay},
        {"params": rhos, "lr": config.rank_lr, "weight_decay": 0.0, "lrlora_rank": True},
    ]


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    for _, layer in lora_layers(model):
        layer.disabled = not enabled


class disable_adapters:  # noqa: N801 - used like a function: `with disable_adapters(model):`
    """Context manager giving the base model's output (the heads stay as trained)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        set_adapters_enabled(self.model, False)
        return self.model

    def __exit__(self, *exc: object) -> None:
        set_adapters_enabled(self.model, True)
