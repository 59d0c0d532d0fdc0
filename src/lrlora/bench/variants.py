"""Method variants for ablations: ``lr-lora+init_rank=8+fill_budget=false`` is LR-LoRA with
those :class:`~lrlora.train.TrainArgs` fields changed.

A variant name is a method, then ``+field=value`` for each changed field, values written as
on the command line (``true``/``false`` for flags, commas between the items of a list). It
is used as the method of a benchmark run, so its id and result file name say exactly what
was changed. A variant may also place the budget differently:
``lora+target_modules=query,key,value,attention.output.dense+budget_rank=9`` is LoRA at rank
9 on the attention layers only, the same parameter count as rank 4 on every layer of
MiniLM (the report states each cell's parameters).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ..app.args import METHODS, TrainArgs

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _convert(name: str, text: str, annotation: Any) -> Any:
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is typing.Literal:
        if text not in kinds:
            raise ValueError(f"{name} must be one of {kinds}, got {text!r}")
        return text
    kind = kinds[0]
    if typing.get_origin(kind) is list:
        items = [item for item in text.split(",") if item]
        if not items:
            raise ValueError(f"{name} is a list: write {name}=a,b,c")
        return items
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{name} is a flag: write {name}=true or {name}=false")
        return text.lower() in _TRUE
    if typing.get_origin(kind) is typing.Literal:
        return _convert(name, text, kind)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={text!r} is not a valid {kind.__name__}") from None


def split_method(name: str) -> tuple[str, dict[str, Any]]:
    """(method, changed TrainArgs fields) of a method or variant name."""
    method, *changes = name.split("+")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} in {name!r}; choose one of {METHODS}")
    hints = typing.get_type_hints(TrainArgs)
    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    overrides: dict[str, Any] = {}
    for change in changes:
        key, sep, text = change.partition("=")
        if not sep or key not in fields:
            raise ValueError(
                f"{change!r} in {name!r} is not field=value with a field of lrlora train "
                f"(e.g. init_rank, rank_lr, fill_budget, rebalance_every, scaling, r_max)"
            )
        overrides[key] = _convert(key, text, hints[key])
    return method, overrides
