"""Reading what :mod:`lrlora.export` saved, trusting nothing in it.

The files are safetensors and JSON (nothing is unpickled), and before a value is used it is
checked against what will hold it: tensor names and shapes against the model's adapter (so
another base model, or an edited ``r_max``, is refused by name instead of by a shape error
deep in torch), the modules a config would train fully against the weights the file holds,
ranks and temperatures against their ranges, hard ranks against the config's budget, and an
optimizer's state against its parameters. A mismatch is a :class:`~lrlora.util.BadFileError`
naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from .budget import config_budget
from .config import LRLoRAConfig
from .inject import config_of, lora_layers, matches, reference_rank, resolve_targets
from .util import BadFileError, excerpt, shorten

SAVED_TODO = (
    "it is not what lrlora.save wrote for this model: load it into the base model it was "
    "saved from, or save the adapter again"
)


# -- safetensors --------------------------------------------------------------------------------
def _unreadable(path: Path, err: Exception, todo: str) -> BadFileError:
    problem = f"is not a complete safetensors file ({shorten(str(err), 120)})"
    return BadFileError(path, problem, todo=todo)


def read_tensors(path: Path, todo: str = SAVED_TODO) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``; BadFileError if it is missing,
    truncated or not safetensors."""
    if not path.is_file():
        raise BadFileError(path, "is missing", todo=todo)
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise _unreadable(path, err, todo) from None


def tensor_shapes(path: Path, todo: str = SAVED_TODO) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``path``, from its header (no data is read)."""
    if not path.is_file():
        raise BadFileError(path, "is missing", todo=todo)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as err:
        raise _unreadable(path, err, todo) from None


# -- an adapter directory -----------------------------------------------------------------------
META_SHAPE = {"format_version": int, "config": dict, "reference_rank": float, "layers": [str],
              "extra?": dict}  # fmt: skip
"""What ``lrlora_config.json`` holds."""


def _factor_shapes(module: nn.Module, name: str, r_max: int) -> dict[str, tuple[int, int]]:
    """The shapes of A and B an adapter of rank ceiling ``r_max`` on ``module`` has."""
    d_out, d_in = module.weight.shape
    if not isinstance(module, nn.Linear):  # Conv1D stores its weight as (d_in, d_out)
        d_in, d_out = d_out, d_in
    return {f"{name}.lora_A": (r_max, d_in), f"{name}.lora_B": (d_out, r_max)}


def check_fits(
    model: nn.Module, config: LRLoRAConfig, meta: dict, shapes: dict, path: Path
) -> None:
    """Before :func:`lrlora.inject` changes anything: ``config`` adapts exactly the layers
    ``meta`` (``lrlora_config.json``) lists of this model, with the reference rank it
    records, the factors in ``adapter.safetensors`` (``shapes``) are those this model and
    ``r_max`` give, and every module ``config`` would train fully has its weights there (an
    edited ``modules_to_save`` would otherwise unfreeze base weights)."""
    meta_file, tensor_file = path / "lrlora_config.json", path / "adapter.safetensors"
    layers = meta["layers"]
    try:
        targets = resolve_targets(model, config)
        ours = reference_rank(model, config, targets)
    except ValueError as err:
        raise BadFileError(meta_file, f"does not fit this model: {err}", todo=SAVED_TODO) from None
    check_reference_rank(meta["reference_rank"], ours, path)
    if targets != layers:
        problem = (
            f"lists other adapted layers ({excerpt(layers[:2])}, {len(layers)} in all) "
            f"than this model's targets ({excerpt(targets[:2])}, {len(targets)} in all)"
        )
        raise BadFileError(meta_file, problem, todo=SAVED_TODO)
    for name in targets:
        for key, want in _factor_shapes(model.get_submodule(name), name, config.r_max).items():
            if shapes.get(key) != want:
                problem = (
                    f"holds {key} of shape {shapes.get(key)}, where this model with "
                    f"r_max={config.r_max} (lrlora_config.json) needs {want}"
                )
                raise BadFileError(tensor_file, problem, todo=SAVED_TODO)
    for name, module in model.named_modules():
        if name and matches(name, config.modules_to_save):
            absent = [k for k in module.state_dict() if f"{name}.{k}" not in shapes]
            if absent:
                problem = (
                    f"names {name} in modules_to_save, but adapter.safetensors holds no "
                    f"{name}.{absent[0]}: loading it would make base weights trainable"
                )
                raise BadFileError(meta_file, problem, todo=SAVED_TODO)


def check_reference_rank(saved: float, ours: float, path: Path) -> None:
    """The reference rank saved with an adapter is ``ours``, the one its config's budget
    gives on the model."""
    if not math.isclose(saved, ours, rel_tol=1e-9):
        problem = f"reference_rank is {saved}, where its config's budget gives {ours}"
        raise BadFileError(path / "lrlora_config.json", problem, todo=SAVED_TODO)


def _more(names: list[str]) -> str:
    return f"{names[0]} (and {len(names) - 1} more)" if len(names) > 1 else names[0]


def check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict, file: Path, todo: str = SAVED_TODO
) -> None:
    """``tensors`` (read from ``file``) are exactly the ``expected`` ones (name -> tensor):
    the same names, shapes and kind (floating or integer), and finite."""
    unknown, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    if unknown:
        problem = f"holds {_more(unknown)}, which this model has no place for"
        raise BadFileError(file, problem, todo=todo)
    if missing:
        raise BadFileError(file, f"holds no {_more(missing)}, which this model has", todo=todo)
    for key, want in expected.items():
        got = tensors[key]
        if got.shape != want.shape:
            shapes = f"{tuple(got.shape)}, where this model needs {tuple(want.shape)}"
            problem = f"holds {key} of shape {shapes}"
            raise BadFileError(file, problem, todo=todo)
        if got.dtype.is_floating_point != want.dtype.is_floating_point:
            problem = f"holds {key} as {got.dtype}, where this model needs {want.dtype}"
            raise BadFileError(file, problem, todo=todo)
        if got.dtype.is_floating_point and not torch.isfinite(got).all():
            raise BadFileError(file, f"holds {key} with NaN or infinite values", todo=todo)


def check_adapter(
    model: nn.Module, tensors: dict[str, torch.Tensor], expected: dict, file: Path
) -> None:
    """``tensors`` (read from the adapter file ``file``) are the ``expected`` ones (as
    :func:`lrlora.export.adapter_state_dict` gives for ``model``; :func:`check_tensors`),
    each layer's rank, temperature and step count are in range, and the hard ranks fit in
    the config's budget."""
    check_tensors(tensors, expected, file)
    _check_layer_values(model, tensors, file)


def _check_layer_values(model: nn.Module, tensors: dict[str, torch.Tensor], file: Path) -> None:
    config, hardened = config_of(model), 0
    for name, layer in lora_layers(model):
        rank, rho = int(tensors[f"{name}.hard_rank"]), float(tensors[f"{name}.rho"])
        checks = {
            "hard_rank": (-1 <= rank <= layer.r_max, f"in [-1, {layer.r_max}]"),
            "rho": (0 <= rho <= layer.r_max, f"in [0, {layer.r_max}]"),
            "tau": (float(tensors[f"{name}.tau"]) > 0, "positive"),
            "steps": (int(tensors[f"{name}.steps"]) >= 0, ">= 0"),
        }
        for key, (ok, what) in checks.items():
            if not ok:
                value = tensors[f"{name}.{key}"].item()
                problem = f"holds {name}.{key} = {value}, which must be {what}"
                raise BadFileError(file, problem, todo=SAVED_TODO)
        hardened += max(rank, 0) * layer.cost_per_rank
    budget = config_budget(config, [layer.cost_per_rank for _, layer in lora_layers(model)])
    if config.rank_mode == "budget" and hardened > budget + 1e-6:
        problem = (
            f"holds hard ranks of {hardened} adapter parameters, over the budget of "
            f"{budget:.0f} its config gives"
        )
        raise BadFileError(file, problem, todo=SAVED_TODO)


# -- an optimizer -------------------------------------------------------------------------------
OPTIMIZER_SHAPE = {"param_groups": [{"params": [int]}],
                   "scalars": {str: (float, bool, None)}}  # fmt: skip
"""What ``optimizer.json`` holds."""


def same_kind(saved: Any, ours: Any) -> bool:
    """Whether a saved hyperparameter can stand where the optimizer has ``ours``."""
    if isinstance(ours, bool) or ours is None or isinstance(ours, str):
        return type(saved) is type(ours)
    if isinstance(ours, (int, float)):
        return (
            isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
        )
    if isinstance(ours, dict):
        return (
            isinstance(saved, dict)
            and set(saved) == set(ours)
            and all(same_kind(saved[k], ours[k]) for k in ours)
        )
    if isinstance(ours, (list, tuple)):
        return (
            isinstance(saved, list)
            and len(saved) == len(ours)
            and all(same_kind(s, o) for s, o in zip(saved, ours, strict=True))
        )
    return False


def optimizer_state(
    optimizer: torch.optim.Optimizer, rest: Any, tensors: dict[str, torch.Tensor], path: Path
) -> dict[str, Any]:
    """The state dict to load into ``optimizer``, from ``optimizer.json`` (``rest``, of
    :data:`OPTIMIZER_SHAPE`) and ``optimizer.safetensors`` (``tensors``) in ``path``, checked
    against its groups, hyperparameters and parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups, json_file = rest["param_groups"], path / "optimizer.json"
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        problem = "holds other parameter groups than this optimizer has"
        raise BadFileError(json_file, problem, todo=SAVED_TODO)
    for saved, ours in zip(groups, optimizer.param_groups, strict=True):
        for key, value in saved.items():
            if key != "params" and key in ours and not same_kind(value, ours[key]):
                problem = f"holds {key}={excerpt(value, 40)}, not a value like {ours[key]!r}"
                raise BadFileError(json_file, problem, todo=SAVED_TODO)
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        index, _, key = flat.partition(".")
        file = path / (
            "optimizer.safetensors" if isinstance(value, torch.Tensor) else "optimizer.json"
        )
        if not index.isdigit() or not key or int(index) >= len(params):
            problem = f"holds state {excerpt(flat, 40)} for no parameter of this optimizer"
            raise BadFileError(file, problem, todo=SAVED_TODO)
        shape = tuple(params[int(index)].shape)
        if isinstance(value, torch.Tensor) and value.dim() and tuple(value.shape) != shape:
            problem = f"holds {flat} of shape {tuple(value.shape)} for a parameter of shape {shape}"
            raise BadFileError(file, problem, todo=SAVED_TODO)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}
