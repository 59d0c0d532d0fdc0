"""Saving, loading and resuming LR-LoRA adapters; export to a stock PEFT LoRA adapter.

Own format (a directory; nothing in it is pickled, and everything read back is checked
against the model, its config and the optimizer first: :mod:`lrlora.files`):

    lrlora_config.json     the LRLoRAConfig, the reference rank and the adapted names
    adapter.safetensors    A, B, rho, tau, hard rank of every layer; the trained heads
    controller.json        RankController.state_dict()            (when given)
    optimizer.safetensors  optimizer tensors, optimizer.json the rest (when given)
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from . import files
from .config import LRLoRAConfig
from .controller import ControllerNotSteppedError, RankController
from .inject import config_of, inject, lora_layers, matches, reference_rank_of
from .layer import LRLoRALinear
from .util import (
    BadFileError,
    check_shape,
    publish_dir,
    read_json,
    staging_dir,
    write_json_atomic,
)

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
    optimizer.load_state_dict(read_optimizer_state(optimizer, directory))


def read_optimizer_state(optimizer: torch.optim.Optimizer, directory: Path) -> dict[str, Any]:
    """The state :func:`save_optimizer` wrote in ``directory``, checked against the
    optimizer's groups and parameters (:func:`lrlora.files.optimizer_state`)."""
    rest = read_json(directory / "optimizer.json", files.SAVED_TODO)
    check_shape(directory / "optimizer.json", rest, files.OPTIMIZER_SHAPE, files.SAVED_TODO)
    tensors = files.read_tensors(directory / "optimizer.safetensors")
    return files.optimizer_state(optimizer, rest, tensors, directory)


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def read_meta(path: str | os.PathLike) -> tuple[dict[str, Any], LRLoRAConfig]:
    """``lrlora_config.json`` of an adapter directory and the config it holds, checked
    (:data:`lrlora.files.META_SHAPE`, the format version, the config's own checks)."""
    file = Path(path) / "lrlora_config.json"
    if not file.is_file():
        raise BadFileError(file, "is missing", todo=f"{path} is not an lrlora adapter directory")
    meta = read_json(file, files.SAVED_TODO)
    check_shape(file, meta, files.META_SHAPE, files.SAVED_TODO)
    if meta["format_version"] != FORMAT_VERSION:
        problem = f"has format_version {meta['format_version']}, not {FORMAT_VERSION}"
        raise BadFileError(file, problem, todo="save it again with this version of lrlora")
    try:
        config = LRLoRAConfig.from_dict(meta["config"])
    except ValueError as err:
        raise BadFileError(file, f"config: {err}", todo=files.SAVED_TODO) from None
    return meta, config


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Inject adapters as saved in ``path`` into a fresh base model and load their weights.

    Nothing is changed before the saved config is known to fit ``model`` (the same adapted
    layers, factor shapes, and weights for every module it trains fully); the tensors are
    then checked as :func:`lrlora.files.check_adapter` says. A mismatch is a
    :class:`~lrlora.util.BadFileError` naming the file."""
    path = Path(path)
    meta, config = read_meta(path)
    shapes = files.tensor_shapes(path / "adapter.safetensors")
    files.check_fits(model, config, meta, shapes, path)
    inject(model, config)
    _copy_adapter_tensors(model, _read_adapter_tensors(model, path))
    return model


def _read_adapter_tensors(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    file = path / "adapter.safetensors"
    tensors = files.read_tensors(file)
    files.check_adapter(model, tensors, adapter_state_dict(model), file)
    return tensors


@torch.no_grad()
def _copy_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key, value in tensors.items():
        own[key].copy_(value)
    for _, layer in lora_layers(model):
        layer.sync_hard_rank()
        layer.rho.requires_grad_(not layer.hardened and layer.config.rank_update != "prune")


def resume(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    controller: RankController | None = None,
) -> dict[str, Any]:
    """Restore A, B, rho, heads, optimizer and controller state saved by :func:`save`
    into an injected model; returns the ``extra`` dict saved with them. Every file is
    checked against the model, optimizer and controller first (:mod:`lrlora.files`); a
    mismatch is a :class:`~lrlora.util.BadFileError` naming the file."""
    path = Path(path)
    meta, _ = read_meta(path)
    names = [name for name, _ in lora_layers(model)]
    if names != meta["layers"]:
        problem = f"lists other adapted layers than this model has ({len(names)})"
        raise BadFileError(path / "lrlora_config.json", problem, todo=files.SAVED_TODO)
    files.check_reference_rank(meta["reference_rank"], reference_rank_of(model), path)
    tensors = _read_adapter_tensors(model, path)
    optimizer_state = None if optimizer is None else read_optimizer_state(optimizer, path)
    controller_state = None if controller is None else _read_controller_state(controller, path)
    _copy_adapter_tensors(model, tensors)  # only once every file is known to fit
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    if controller is not None:
        controller.load_state_dict(controller_state)
    return meta.get("extra", {})


def _read_controller_state(controller: RankController, path: Path) -> dict[str, Any]:
    file = path / "controller.json"
    state = read_json(file, files.SAVED_TODO)
    try:
        controller.check_state(state)
    except ValueError as err:
        raise BadFileError(file, str(err), todo=files.SAVED_TODO) from None
    return state


# -- stock PEFT -----------------------------------------------------------------------------
def _require_hardened(model: nn.Module) -> list[tuple[str, LRLoRALinear]]:
    layers = list(lora_layers(model))
    if any(not layer.hardened for _, layer in layers):
        if all(int(layer.steps) == 0 for _, layer in layers):
            raise ControllerNotSteppedError(
                "the adapter's ranks were never learned: the RankController was never stepped. "
                "Train with the optimizer it was built with (it steps after every "
                "optimizer.step()), or call controller.step() after every optimizer step (or use "
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
