"""Saving, loading and resuming LR-LoRA adapters; export to a stock PEFT LoRA adapter.

Own format (a directory; nothing in it is pickled):

    lrlora_config.json     the LRLoRAConfig, the reference rank and the adapted names
    adapter.safetensors    A, B, rho, tau, hard rank of every layer; the trained heads
    controller.json        RankController.state_dict()            (when given)
    optimizer.safetensors  optimizer tensors, optimizer.json the rest (when given)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import LRLoRAConfig
from .controller import ControllerNotSteppedError, RankController
from .inject import config_of, inject, lora_layers, matches, reference_rank_of
from .layer import LRLoRALinear
from .util import publish_dir, staging_dir, write_json_atomic

FORMAT_VERSION = 1


def _refuse_overwrite(path: Path, overwrite: bool, marker: str) -> None:
    """Refuse to replace a non-empty ``path`` unless ``overwrite``, and even then unless it
    holds ``marker``: the directory is replaced as a whole, so it must be one this module
    wrote (an adapter directory), never the working directory or someone's folder."""
    here = Path.cwd().resolve()
    if path.resolve() in (here, *here.parents):
        raise FileExistsError(f"{path} is the working directory or holds it: choose a new one.")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not (path / marker).is_file():
        raise FileExistsError(
            f"{path} holds other files than an adapter ({marker} is not there): it is never "
            "replaced, even with overwrite=True; choose a directory of its own."
        )
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")


# -- own format -----------------------------------------------------------------------------
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A, B, rho and the layer buffers of every adapter, plus the trained heads."""
    config = config_of(model)
    state = {}
    for name, layer in lora_layers(model):
        for key, value in layer.state_dict().items():
            if not key.startswith("base."):
                state[f"{name}.{key}"] = value
    for name, module in model.named_modules():
        if name and matches(name, config.modules_to_save):
            for key, value in module.state_dict().items():
                state[f"{name}.{key}"] = value
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    controller: RankController | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save the adapter (and, for resuming, the controller and optimizer) atomically."""
    final = Path(path)
    _refuse_overwrite(final, overwrite, "lrlora_config.json")
    tmp = staging_dir(final)
    try:
        meta = {
            "format_version": FORMAT_VERSION,
            "config": config_of(model).to_dict(),
            "reference_rank": reference_rank_of(model),
            "layers": [name for name, _ in lora_layers(model)],
            "extra": extra or {},
        }
        write_json_atomic(tmp / "lrlora_config.json", meta)
        save_file(adapter_state_dict(model), str(tmp / "adapter.safetensors"))
        if controller is not None:
            write_json_atomic(tmp / "controller.json", controller.state_dict())
        if optimizer is not None:
            save_optimizer(optimizer, tmp)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """``optimizer.safetensors`` (its tensors) and ``optimizer.json`` (the rest) in
    ``directory``; nothing pickled."""
    tensors, rest = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(directory / "optimizer.safetensors"))
    write_json_atomic(directory / "optimizer.json", rest)


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Restore an optimizer written by :func:`save_optimizer`."""
    rest = json.loads((directory / "optimizer.json").read_text())
    tensors = load_file(str(directory / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer_state(tensors, rest))


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / "lrlora_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not an lrlora adapter directory.")
    meta = json.loads(file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {meta.get('format_version')} is not supported.")
    return meta


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Inject adapters as saved in ``path`` into a fresh base model and load their weights."""
    meta = read_meta(path)
    inject(model, LRLoRAConfig.from_dict(meta["config"]))
    for _, layer in lora_layers(model):
        layer.reference_rank = meta["reference_rank"]
    names = [name for name, _ in lora_layers(model)]
    if names != meta["layers"]:
        raise ValueError(f"{path} was saved for other layers than this model has: {names[:3]}...")
    _load_adapter_tensors(model, Path(path))
    return model


@torch.no_grad()
def _load_adapter_tensors(model: nn.Module, path: Path) -> None:
    tensors = load_file(str(path / "adapter.safetensors"))
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"{path}: tensors {unknown[:5]} have no place in this model.")
    for key, value in tensors.items():
        own[key].copy_(value)
    for _, layer in lora_layers(model):
        layer.sync_hard_rank()
        layer.rho.requires_grad_(not layer.hardened)


def resume(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    controller: RankController | None = None,
) -> dict[str, Any]:
    """Restore A, B, rho, heads, optimizer and controller state saved by :func:`save`
    into an injected model; returns the ``extra`` dict saved with them."""
    path = Path(path)
    meta = read_meta(path)
    _load_adapter_tensors(model, path)
    if optimizer is not None:
        load_optimizer(optimizer, path)
    if controller is not None:
        controller.load_state_dict(json.loads((path / "controller.json").read_text()))
    return meta["extra"]


# -- stock PEFT -----------------------------------------------------------------------------
def _require_hardened(model: nn.Module) -> list[tuple[str, LRLoRALinear]]:
    layers = list(lora_layers(model))
    if any(not layer.hardened for _, layer in layers):
        if all(int(layer.steps) == 0 for _, layer in layers):
            raise ControllerNotSteppedError(
                "the adapter's ranks were never learned: the RankController was never stepped. "
                "Call controller.step() after every optimizer step (or use "
                "lrlora.hf.LRLoRACallback), then controller.harden() before exporting."
            )
        raise ValueError(
            "harden the ranks first: controller.harden() (the Trainer callback "
            "does it at the end of training)."
        )
    return layers


def export_peft(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a stock PEFT LoRA adapter: integer ``rank_pattern``/``alpha_pattern`` (alpha = r,
    so PEFT's scaling is 1 and our scaling is folded into B), rank-0 layers left out."""
    layers = _require_hardened(model)
    config = config_of(model)
    final = Path(path)
    _refuse_overwrite(final, overwrite, "adapter_config.json")
    tensors, ranks = {}, {}
    for name, layer in layers:
        rank = int(layer.hard_rank)
        if rank == 0:
            continue
        ranks[name] = rank
        scale = float(layer.scaling())
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[:rank]
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[:, :rank] * scale
    heads = adapter_state_dict(model)
    for name, module in model.named_modules():
        if name and matches(name, config.modules_to_save):
            for key in module.state_dict():
                tensors[f"base_model.model.{name}.{key}"] = heads[f"{name}.{key}"]
    peft_config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": max(ranks.values(), default=1),
        "lora_alpha": max(ranks.values(), default=1),
        "target_modules": sorted(ranks),
        "rank_pattern": ranks,
        "alpha_pattern": dict(ranks),
        "modules_to_save": list(config.modules_to_save) or None,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in layers),
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    tmp = staging_dir(final)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_json_atomic(tmp / "adapter_config.json", peft_config)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@torch.no_grad()
def merge(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A plain model (no LR-LoRA modules) with every adapter folded into its weights."""
    layers = _require_hardened(model) if any(True for _ in lora_layers(model)) else []
    if not inplace:
        model = copy.deepcopy(model)
        layers = list(lora_layers(model))
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)
    return model
