"""The planted-rank proving ground: does a method put rank where the loss needs it?

A teacher is the base model plus planted low-rank deltas ``U_l V_l^T`` whose rank differs by
layer (a *pattern*); the student is the same base with an adapter whose budget equals the
planted parameter total, trained to match the teacher's last hidden states on real text
(SST-2 sentences). Dropout is off, so the target is deterministic. The score is the
held-out relative error

    rel_error = mean ||h_student - h_teacher||^2 / mean ||h_base - h_teacher||^2

on sentences never trained on (SST-2 dev): 1 is "learned nothing", 0 is "found the deltas".
For methods that choose ranks, ``rank_spearman`` is the Spearman correlation over layers of
the learned hard ranks with the planted ones.

A pattern is data: an ordered mapping from module-name regular expressions (full match) to
ranks; the first rule that matches a layer gives its rank, and an unmatched layer gets 0. A
rule's value may also be ``[rank, strength]``: that layer's delta is ``strength`` times the
suite's planted norm (inline: ``regex=rank@strength``).

Calibration (MiniLM-L6, pattern ``attention-deep``, seed 0, 300 steps of 16 sentences of up
to 32 tokens, every planted delta 0.15x its weight in Frobenius norm, AdamW with 10% warm-up
and linear decay): the oracle must fit (relative error <= 0.1) and uniform LoRA must be held
back by where its rank sits (>= 2x the oracle). At lr 5e-3 the oracle reached 0.100 and
LoRA 0.183 (1.8x); at lr 1e-2, 0.086 and 0.188 (2.2x), so the suite trains at 1e-2. The
student's own dropout stays off (the model is kept in eval mode): with BERT's dropout on,
the oracle reached only 0.61 in the same steps. On ``mlp`` at equal norm per layer uniform
LoRA came within 1.37x of the oracle (0.107 against 0.078: the two rank-10 layers are 2 of 36
layers' worth of target); at 3x the norm for those two the oracle reaches 0.076 and LoRA
0.186 (2.5x).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..app.baselines import (
    SCALING,
    adalora_step,
    adapter_param_counts,
    final_ranks,
    make_peft_model,
)
from ..config import LRLoRAConfig
from ..controller import RankController
from ..inject import inject, lora_layers, matches, optimizer_groups
from ..layer import is_adaptable

Pattern = dict[str, Any]
"""regex -> rank, or regex -> [rank, strength] (see ``rule_value``)."""

_ATTN_VO = r"attention\.(self\.value|output\.dense)"
PATTERNS: dict[str, Pattern] = {
    # Deep attention needs rank 12, shallow attention little, the MLP nothing.
    "attention-deep": {
        rf".*layer\.[345]\.{_ATTN_VO}": 12,
        rf".*layer\.[012]\.{_ATTN_VO}": 2,
        r".*\.(query|key)": 1,
    },
    # Two MLP-in layers need rank 10; every other layer rank 1. At the suite's equal norm per
    # layer the two are 2 of 36 layers' worth of target, so where the rank sits hardly
    # matters (seed 0: uniform LoRA 1.37x the oracle); at 3x the norm they are a third of it.
    "mlp": {r".*layer\.[24]\.intermediate\.dense": [10, 3.0], r".*": 1},
    # Rank grows with depth: nothing in the first two blocks, 8 in the last.
    "depth": {
        r".*layer\.[01]\..*": 0,
        r".*layer\.2\..*": 1,
        r".*layer\.3\..*": 2,
        r".*layer\.4\..*": 4,
        r".*layer\.5\..*": 8,
    },
    # The control: every layer the same rank, where allocation cannot help.
    "uniform": {r".*": 2},
}
"""The named patterns for MiniLM-L6 (BERT names); ``parse_pattern`` reads a user's own."""

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
RANK_METHODS = ("lr-lora", "adalora")
"""Methods that choose their ranks (the others have them fixed): they get ``rank_spearman``."""


class PatternError(ValueError):
    """A planted pattern that cannot be read or that plants nothing."""


def parse_pattern(text: str) -> Pattern:
    """A pattern from a name (``PATTERNS``), a JSON file, inline JSON, or ``regex=rank,...``."""
    if text in PATTERNS:
        return dict(PATTERNS[text])
    source = text
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise PatternError(f"cannot read the pattern file {path}: {error}") from None
    try:
        data = json.loads(source) if source.lstrip().startswith("{") else _pairs(source)
    except ValueError as error:
        raise PatternError(
            f"pattern {text[:80]!r} is neither a name ({', '.join(PATTERNS)}), a JSON object "
            f"of regex -> rank, nor 'regex=rank,...': {error}"
        ) from None
    return _checked(data, text)


def _pairs(text: str) -> dict[str, Any]:
    pairs = [item.rsplit("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ValueError("every item must read regex=rank or regex=rank@strength")
    rules: dict[str, Any] = {}
    for regex, value in pairs:
        rank, sep, strength = value.partition("@")
        rules[regex.strip()] = [int(rank), float(strength)] if sep else int(rank)
    return rules


def rule_value(value: Any) -> tuple[int, float]:
    """(rank, strength) of a rule's value: ``rank`` or ``[rank, strength]``."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), float(value[1])
    return int(value), 1.0


def _checked(data: Any, text: str) -> Pattern:
    if not isinstance(data, dict) or not data:
        raise PatternError(f"pattern {text[:80]!r} must be a non-empty mapping of regex -> rank")
    for regex, rank in data.items():
        try:
            re.compile(regex)
        except re.error as error:
            raise PatternError(
                f"pattern rule {regex!r} is not a regular expression: {error}"
            ) from None
        value = rank
        if isinstance(value, (list, tuple)):
            strength = value[1] if len(value) == 2 else None
            if (
                not isinstance(strength, (int, float))
                or isinstance(strength, bool)
                or not (math.isfinite(strength) and strength > 0)
            ):
                raise PatternError(
                    f"pattern rule {regex!r}: [rank, strength] needs a positive finite "
                    f"strength, got {value!r}"
                )
            rank = value[0]
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise PatternError(
                f"pattern rule {regex!r}: rank must be an integer >= 0, got {rank!r}"
            )
    return {regex: list(v) if isinstance(v, tuple) else v for regex, v in data.items()}


def planted_rules(
    model: nn.Module, pattern: Pattern, targets: list[str]
) -> dict[str, tuple[int, float]]:
    """(rank, strength) of every targeted linear layer ((0, 1) where no rule matches)."""
    rules = {}
    for name, module in model.named_modules():
        if name and is_adaptable(module) and matches(name, targets):
            rule = next((r for r in pattern if re.fullmatch(r, name)), None)
            rules[name] = rule_value(pattern[rule]) if rule is not None else (0, 1.0)
    return rules


def planted_strengths(model: nn.Module, pattern: Pattern, targets: list[str]) -> dict[str, float]:
    """Each targeted layer's planted norm as a multiple of the suite's ``scale``."""
    rules = planted_rules(model, pattern, targets)
    return {name: strength for name, (_, strength) in rules.items()}


def planted_ranks(model: nn.Module, pattern: Pattern, targets: list[str]) -> dict[str, int]:
    """Planted rank of every targeted linear layer (0 where no rule matches)."""
    ranks = {name: rank for name, (rank, _) in planted_rules(model, pattern, targets).items()}
    if not any(ranks.values()):
        raise PatternError(f"pattern {pattern} plants no rank in any of {len(ranks)} layers")
    for name, rank in ranks.items():
        limit = min(model.get_submodule(name).weight.shape)
        if rank > limit:
            raise PatternError(f"{name} cannot hold rank {rank}: its limit is {limit}")
    return ranks


def cost_per_rank(module: nn.Module) -> int:
    return sum(module.weight.shape)


def planted_params(model: nn.Module, ranks: Mapping[str, int]) -> int:
    """Parameters of the planted deltas: rank x (d_in + d_out) summed over layers."""
    return sum(r * cost_per_rank(model.get_submodule(n)) for n, r in ranks.items())


@torch.no_grad()
def plant(
    model: nn.Module,
    ranks: Mapping[str, int],
    scale: float,
    generator: torch.Generator,
    strengths: Mapping[str, float] | None = None,
) -> nn.Module:
    """A teacher: a copy of ``model`` with ``W += U V^T`` of the given rank in each layer,
    Gaussian factors scaled so that ``||U V^T||_F = scale * strength * ||W||_F`` whatever
    the rank (strength 1 unless ``strengths`` names the layer)."""
    teacher = copy.deepcopy(model)
    for name, rank in ranks.items():
        if rank == 0:
            continue
        weight = teacher.get_submodule(name).weight
        d_out, d_in = weight.shape
        u = torch.randn(d_out, rank, generator=generator, dtype=torch.float64)
        v = torch.randn(rank, d_in, generator=generator, dtype=torch.float64)
        delta = u @ v
        strength = (strengths or {}).get(name, 1.0)
        delta *= scale * strength * weight.double().norm() / delta.norm()
        weight += delta.to(weight.dtype)
    return teacher


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan if either is constant."""

    def ranked(values: list[float]) -> torch.Tensor:
        v = torch.tensor(values, dtype=torch.float64)
        order = v.argsort()
        ranks = torch.empty_like(v)
        ranks[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # ties share their mean rank
            tied = v == value
            ranks[tied] = ranks[tied].mean()
        return ranks

    a, b = ranked(x), ranked(y)
    a, b = a - a.mean(), b - b.mean()
    denominator = a.norm() * b.norm()
    return float(a @ b / denominator) if denominator > 0 else math.nan


def relative_error(student: torch.Tensor, teacher: torch.Tensor, base: torch.Tensor) -> float:
    """sum ||student - teacher||^2 / sum ||base - teacher||^2 over the same tokens."""
    return float((student - teacher).pow(2).sum() / (base - teacher).pow(2).sum())


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Batches:
    """Tokenised sentences: training batches drawn in a seeded order, and a held-out set."""

    train: list[dict[str, torch.Tensor]]
    held_out: list[dict[str, torch.Tensor]]


def make_batches(
    tokenizer: Any,
    train_text: list[str],
    held_out_text: list[str],
    steps: int,
    batch_size: int,
    max_length: int,
    seed: int,
) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    order = torch.cat(
        [
            torch.randperm(len(train_text), generator=generator)
            for _ in range(-(-need // len(train_text)))
        ]
    )[:need].tolist()

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt"))  # fmt: skip

    train = [encode([train_text[i] for i in order[s : s + batch_size]])
             for s in range(0, need, batch_size)]  # fmt: skip
    held = [encode(held_out_text[s : s + 64]) for s in range(0, len(held_out_text), 64)]
    return Batches(train, held)


def hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last hidden states of the real tokens, (tokens, hidden)."""
    out = model(**batch).last_hidden_state
    return out[batch["attention_mask"].bool()]


@torch.no_grad()
def held_out_states(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    model.eval()
    return torch.cat([hidden(model, b) for b in batches])


# -- students -------------------------------------------------------------------------------------
@dataclass
class Student:
    """An adapted model, its optimizer, and what to do after each optimizer step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    after_step: Callable[[int], None]  # after optimizer step n (1-based)
    finish: Callable[[], dict[str, int]]  # final ranks of a rank-choosing method, else {}
    params: Callable[[], int]  # adapter parameters at the end


def make_student(
    base: nn.Module,
    method: str,
    ranks: Mapping[str, int],
    budget: int,
    steps: int,
    lr: float,
    settings: Mapping[str, Any] | None = None,
    probe: list[tuple[dict[str, torch.Tensor], torch.Tensor]] | None = None,
) -> Student:
    """``method``: lora (uniform rank, rounded up to cover the budget), oracle (LoRA with the
    planted ranks), adalora, or lr-lora (``settings`` override its LRLoRAConfig fields).
    ``probe``: (batch, teacher states) pairs an LR-LoRA controller that prunes measures its
    components on."""
    model = copy.deepcopy(base)
    if method == "lr-lora":
        return _lr_lora_student(model, budget, steps, lr, dict(settings or {}), probe or [])
    return _peft_student(model, method, ranks, budget, steps, lr)


def _lr_lora_student(
    model: nn.Module,
    budget: int,
    steps: int,
    lr: float,
    settings: dict[str, Any],
    probe: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
) -> Student:
    if settings.get("alpha") is None:  # lrlora train's: 2 x the budget rank
        modules = model.named_modules()
        per_rank = sum(
            cost_per_rank(m) for n, m in modules if is_adaptable(m) and matches(n, TARGETS)
        )
        settings = {**settings, "alpha": SCALING * budget / per_rank}
    config = LRLoRAConfig(target_modules=list(TARGETS), budget_params=budget, **settings)
    inject(model, config)
    optimizer = torch.optim.AdamW(optimizer_groups(model, lr=lr, weight_decay=0.0))

    def loss_on(i: int) -> torch.Tensor:  # the distillation loss on probe batch i
        batch, target = probe[i % len(probe)]
        return (hidden(model, batch) - target).pow(2).mean()

    controller = RankController(
        model, optimizer, total_steps=steps, probe=loss_on if probe else None
    )

    def finish() -> dict[str, int]:
        return controller.harden()

    def params() -> int:
        return sum(
            layer.current_hard_rank() * layer.cost_per_rank for _, layer in lora_layers(model)
        )

    # Nothing after the optimizer step: the controller steps itself from its post-step hook.
    return Student(model, optimizer, lambda step: None, finish, params)


def _peft_student(
    model: nn.Module, method: str, ranks: Mapping[str, int], budget: int, steps: int, lr: float
) -> Student:
    from peft import LoraConfig, get_peft_model

    per_rank = sum(cost_per_rank(model.get_submodule(n)) for n in ranks)
    rank = math.ceil(budget / per_rank - 1e-9)  # never below the budget
    if method == "oracle":
        kept = {n: r for n, r in ranks.items() if r > 0}
        config = LoraConfig(
            r=max(kept.values()),
            lora_alpha=SCALING * max(kept.values()),
            target_modules=list(kept),
            rank_pattern=kept,
            alpha_pattern={n: SCALING * r for n, r in kept.items()},
            lora_dropout=0.0,
        )
        model = get_peft_model(model, config)
        counted = "lora"
    else:
        model = make_peft_model(model, method, rank, list(TARGETS), total_steps=steps)
        counted = method
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )

    def after_step(step: int) -> None:
        if method == "adalora":
            adalora_step(model, step)

    def finish() -> dict[str, int]:
        return final_ranks(model, "adalora") if method == "adalora" else {}

    def params() -> int:
        return adapter_param_counts(model, counted)["adapter"]

    return Student(model, optimizer, after_step, finish, params)


# -- one run -------------------------------------------------------------------------------------
@dataclass
class PlantedSetup:
    """Everything a run needs that does not depend on the method."""

    base: nn.Module
    teacher: nn.Module
    ranks: dict[str, int]
    budget: int
    batches: Batches
    teacher_held_out: torch.Tensor
    base_held_out: torch.Tensor


def build_setup(
    base: nn.Module,
    tokenizer: Any,
    pattern: Pattern,
    texts: tuple[list[str], list[str]],
    *,
    seed: int,
    steps: int,
    batch_size: int,
    max_length: int,
    scale: float,
) -> PlantedSetup:
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    ranks = planted_ranks(base, pattern, TARGETS)
    strengths = planted_strengths(base, pattern, TARGETS)
    teacher = plant(base, ranks, scale, torch.Generator().manual_seed(1000 + seed), strengths)
    batches = make_batches(tokenizer, *texts, steps, batch_size, max_length, seed)
    target = held_out_states(teacher, batches.held_out)
    base_states = held_out_states(base, batches.held_out)
    return PlantedSetup(
        base, teacher, ranks, planted_params(base, ranks), batches, target, base_states
    )


def train_student(
    setup: PlantedSetup,
    method: str,
    *,
    seed: int,
    lr: float,
    settings: Mapping[str, Any] | None = None,
    log_every: int = 0,
) -> dict[str, Any]:
    """Train one student on the setup; returns the metrics of its result file."""
    torch.manual_seed(seed)
    steps = len(setup.batches.train)
    probe = []
    if method == "lr-lora" and (settings or {}).get("rank_update") == "prune":
        with torch.no_grad():  # the first training batches, with the teacher's states
            probe = [
                (b, hidden(setup.teacher, b))
                for b in setup.batches.train[: RankController.PROBE_BATCHES]
            ]
    student = make_student(
        setup.base, method, setup.ranks, setup.budget, steps, lr, settings, probe
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        student.optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * (1 - s / steps)
    )
    student.model.eval()  # no dropout anywhere: the target is deterministic, so is the student
    for step, batch in enumerate(setup.batches.train, start=1):
        with torch.no_grad():
            target = hidden(setup.teacher, batch)
        loss = (hidden(student.model, batch) - target).pow(2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method}: loss is {float(loss)} at step {step}")
        loss.backward()
        student.optimizer.step()
        student.after_step(step)
        student.optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if log_every and step % log_every == 0:
            print(f"  step {step} loss {float(loss):.5f}", flush=True)
    learned = student.finish()
    states = held_out_states(student.model, setup.batches.held_out)
    error = relative_error(states, setup.teacher_held_out, setup.base_held_out)
    metrics: dict[str, Any] = {
        "rel_error": error,
        "adapter_params": student.params(),
        "budget_params": setup.budget,
    }
    if learned:
        names = list(setup.ranks)
        metrics["ranks"] = {n: int(learned[n]) for n in names}
        metrics["rank_spearman"] = spearman(
            [float(learned[n]) for n in names], [float(setup.ranks[n]) for n in names]
        )
    return metrics


def layers(ranks: Mapping[str, int]) -> Iterator[tuple[int, str]]:
    """(block, kind) for BERT layer names, for heat maps."""
    for name in ranks:
        match = re.search(r"layer\.(\d+)\.(.*)", name)
        yield (int(match.group(1)), match.group(2)) if match else (0, name)
