"""The controller's schedules, pure functions of the step: the gate temperature tau and the
allowed adapter size (the budget's allowance)."""

from __future__ import annotations

import math


def temperature(step: int, total: int, start: float, end: float, shape: str = "cosine") -> float:
    """tau at ``step``: from ``start`` at 0 to ``end`` at ``total``, then held."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    if shape == "linear":
        return start + (end - start) * t
    if shape == "exp":
        return start * (end / start) ** t
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def allowance(
    step: int, total: int, initial: float, target: float, warmup_frac: float, decay_end_frac: float
) -> float:
    """Allowed adapter size at ``step``: ``initial`` during warm-up, a cubic decay to
    ``target`` by ``decay_end_frac`` of training, then ``target`` (AdaLoRA's schedule)."""
    if initial <= target:
        return target
    start, end = warmup_frac * total, decay_end_frac * total
    if step <= start:
        return initial
    if step >= end:
        return target
    remaining = 1.0 - (step - start) / (end - start)
    return target + (initial - target) * remaining**3
