"""Checkpoints of an ``lrlora train`` run: atomic step directories, nothing pickled.

::

    <run dir>.checkpoints/
      step-00000008/
        run.json               TrainArgs and the number of processes (a resume must match)
        trainer_state.json     the Trainer's state: global step, epoch, log history
        scheduler.json         the learning-rate scheduler's state
        optimizer.safetensors  the optimizer's tensors; optimizer.json the rest
        model/                 the method's state: lrlora.save() for LR-LoRA (A, B, rho,
                               heads, controller.json); trainable.safetensors for peft
        trajectory.json        the rank trajectory recorded so far
        rng-0.safetensors      process 0's RNG: torch (and CUDA) states as uint8 tensors,
        rng-1.safetensors ...  numpy's key as int64, Python's and numpy's rest in metadata

A checkpoint is written into ``.step-<N>.tmp`` and renamed into place when complete;
the previous one is deleted only after that. A crash at any moment therefore leaves
the last complete checkpoint, and :func:`latest` never sees a half-written one.

A checkpoint to resume from is read as a file from anywhere: :func:`verify` checks every
file before training starts, the loaders check what they load against the model and
optimizer, and anything missing or damaged is a :class:`CheckpointError` naming the file
and what to do (resume from an earlier checkpoint, or start over).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import TrainerState

from ..files import OPTIMIZER_SHAPE, same_kind, tensor_shapes
from ..util import BadFileError, check_shape, excerpt, read_json, shorten
from .runs import SHAPES

PREFIX = "step-"
OURS = re.compile(rf"\.?{PREFIX}\d+(\.tmp)?")
"""Names of what this module writes under a checkpoint root: ``step-<N>`` and its staging
``.step-<N>.tmp``. Nothing else there is ever deleted."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def staging_dir(root: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written; the same name on every process."""
    return root / f".{PREFIX}{step:08d}.tmp"


def is_ours(path: Path) -> bool:
    """A checkpoint or staging directory written by this module."""
    return path.is_dir() and OURS.fullmatch(path.name) is not None


def latest(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if is_ours(p) and not p.name.startswith(".")]
    return max(found, key=step_of, default=None)


def foreign(root: Path) -> list[Path]:
    """What lies under ``root`` that this module did not write (never deleted)."""
    return sorted(p for p in root.iterdir() if not is_ours(p)) if root.is_dir() else []


def clear(root: Path) -> None:
    """Delete the checkpoints and staging directories under ``root``, then ``root`` itself
    if that left it empty; anything else in it stays where it is."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if is_ours(path):
            shutil.rmtree(path, ignore_errors=True)
    if not any(root.iterdir()):
        root.rmdir()


def begin(root: Path, step: int) -> Path:
    """An empty staging directory for ``step`` (a leftover of a crash is cleared)."""
    tmp = staging_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, root: Path) -> Path:
    """Rename a complete staging directory into place, then delete every other
    checkpoint and leftover staging directory."""
    final = root / tmp.name[1:].removesuffix(".tmp")
    os.replace(tmp, final)
    for path in root.iterdir():
        if path != final and is_ours(path):
            shutil.rmtree(path, ignore_errors=True)
    return final


def step_of(path: Path) -> int:
    return int(path.name.lstrip(".").removesuffix(".tmp")[len(PREFIX) :])


# -- reading one back ---------------------------------------------------------------------------
class CheckpointError(BadFileError):
    """A file of the checkpoint to resume from is missing, or does not hold what it should;
    the message names it and says what to do."""


def damaged(err: BadFileError) -> CheckpointError:
    """``err`` (about a file inside a checkpoint) with what to do: resume from the previous
    checkpoint, if there is one, or start over."""
    step = next((p for p in (err.path, *err.path.parents) if OURS.fullmatch(p.name)), None)
    if step is None:  # not inside a checkpoint directory
        return CheckpointError(err.path, err.problem, line=err.line, todo=err.todo)
    complete = [p for p in step.parent.iterdir() if is_ours(p) and not p.name.startswith(".")]
    earlier = sorted((p for p in complete if step_of(p) < step_of(step)), key=step_of)
    start_over = f"rerun without --resume and with --overwrite (which deletes {step.parent})"
    if earlier:
        todo = (
            f"the checkpoint {step.name} is damaged: move it out of {step.parent} to resume "
            f"from the previous checkpoint {earlier[-1].name}, or start over: {start_over}"
        )
    else:
        todo = f"the checkpoint {step.name} is damaged and there is no earlier one: {start_over}"
    return CheckpointError(err.path, err.problem, line=err.line, todo=todo)


def read_checked(path: Path, shape: Any) -> Any:
    """The JSON value in ``path``, a file of a checkpoint, if it has ``shape``."""
    try:
        data = read_json(path)
        check_shape(path, data, shape)
    except BadFileError as err:
        raise damaged(err) from None
    return data


RUN_SHAPE = {"args": {"lr": float, "rank_lr": float}, "world_size": int}


def read_run(path: Path) -> dict[str, Any]:
    """``run.json`` of the checkpoint ``path``: the run's arguments (positive learning
    rates: a resume scales by new / saved) and number of processes."""
    run = read_checked(path / "run.json", RUN_SHAPE)
    if min(run["args"]["lr"], run["args"]["rank_lr"]) <= 0 or run["world_size"] < 1:
        problem = "holds a learning rate or number of processes that is not positive"
        raise damaged(BadFileError(path / "run.json", problem))
    return run


_ANY = (float, str, bool, None)
TRAINER_STATE_SHAPE = {
    "global_step": int, "max_steps": int, "epoch": float, "total_flos": float,
    "log_history": [{str: _ANY}], "best_model_checkpoint?": None, "trial_params?": None,
    "stateful_callbacks?": (dict, None), "train_batch_size?": (int, None),
    "best_metric?": (float, None), "best_global_step?": (int, None), "trial_name?": (str, None),
    "num_input_tokens_seen?": int,
    **dict.fromkeys(("logging_steps?", "eval_steps?", "save_steps?", "num_train_epochs?"), float),
    **dict.fromkeys(("is_local_process_zero?", "is_world_process_zero?",
                     "is_hyper_param_search?"), bool),
}  # fmt: skip
"""What the Trainer's ``trainer_state.json`` may hold (no path: nothing read chooses one)."""
TRAJECTORY_SHAPE = SHAPES["ranks.json"]["trajectory"]


def _check_trainer_state(path: Path, total_steps: int) -> None:
    file = path / "trainer_state.json"
    state = read_checked(file, TRAINER_STATE_SHAPE)
    fields = {f.name for f in dataclasses.fields(TrainerState)}
    unknown = sorted(set(state) - fields)
    problem = None
    if unknown:
        problem = f"holds {excerpt(unknown[0], 40)}, which is no field of the Trainer's state"
    elif state["global_step"] != step_of(path):
        problem = f"global_step is {state['global_step']}, but the checkpoint is {path.name}"
    elif not 0 < state["global_step"] < total_steps:
        problem = f"global_step {state['global_step']} is not within this run's {total_steps} steps"
    if problem:
        raise damaged(BadFileError(file, problem))


FILES = ("run.json", "trainer_state.json", "scheduler.json", "trajectory.json", "optimizer.json",
         "optimizer.safetensors", "model")  # fmt: skip
MODEL_FILES = ("lrlora_config.json", "adapter.safetensors", "controller.json",
               "trainable.safetensors")  # fmt: skip
"""What a checkpoint holds (besides ``rng-<process>.safetensors``): anything else, a pickle
above all, is refused rather than left for a loader to find."""


def _check_names(path: Path, world_size: int) -> None:
    ours = {*FILES, *(f"rng-{i}.safetensors" for i in range(world_size))}
    model = path / "model"
    found = [p for p in path.iterdir() if p.name not in ours]
    found += [p for p in model.iterdir() if p.name not in MODEL_FILES] if model.is_dir() else []
    if found:
        problem = "is not a file lrlora writes in a checkpoint (nothing pickled is ever loaded)"
        raise damaged(BadFileError(sorted(found)[0], problem))


def verify(path: Path, world_size: int, total_steps: int) -> None:
    """Check every file of the checkpoint ``path`` that can be checked before the model and
    optimizer load theirs: no file lrlora does not write, each JSON file's shape, the
    Trainer's step, the header of every safetensors file (a truncated or empty one), the
    model directory and one RNG state per process. Raises :class:`CheckpointError`."""
    _check_names(path, world_size)
    read_checked(path / "run.json", RUN_SHAPE)
    _check_trainer_state(path, total_steps)
    read_checked(path / "scheduler.json", {"base_lrs": [float], "last_epoch": int})
    read_checked(path / "trajectory.json", TRAJECTORY_SHAPE)
    read_checked(path / "optimizer.json", OPTIMIZER_SHAPE)
    names = ["optimizer.safetensors", *(f"rng-{i}.safetensors" for i in range(world_size))]
    try:
        if not (path / "model").is_dir():
            raise BadFileError(path / "model", "is missing (the trained weights)")
        for name in names:
            tensor_shapes(path / name, todo="")
    except BadFileError as err:
        raise damaged(err) from None


def same_keys_and_kinds(path: Path, saved: dict, ours: dict) -> None:
    """A saved state (``scheduler.json``) holds the keys of ``ours`` with values of the
    same kind (numbers, lists of the same length, ...), so loading it changes values only."""
    differ = sorted(set(saved) ^ set(ours)) or [k for k in ours if not same_kind(saved[k], ours[k])]
    if differ:
        key = differ[0]
        problem = (
            f"holds {key!r} = {excerpt(saved.get(key), 40)}, where this run has "
            f"{excerpt(ours.get(key), 40)}"
        )
        raise damaged(BadFileError(path, problem))


# -- random number generators -------------------------------------------------------------------
def save_rng_state(path: Path) -> None:
    """This process's torch, CUDA, numpy and Python RNG states, as safetensors."""
    import numpy as np

    kind, key, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(key.astype(np.int64))}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    version, internal, gauss = random.getstate()
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
    }
    save_file(tensors, str(path), metadata=metadata)


def load_rng_state(path: Path) -> None:
    """Restore the states written by :func:`save_rng_state`, once every one is checked
    (:class:`CheckpointError` otherwise)."""
    import numpy as np

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    except (OSError, SafetensorError) as err:
        problem = f"is not a complete safetensors file ({shorten(str(err), 120)})"
        raise damaged(BadFileError(path, problem)) from None
    python, numpy_state = _rng_states(tensors, metadata)
    if python is None:
        raise damaged(BadFileError(path, f"does not hold {numpy_state}"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = numpy_state
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(python)


def _is_word(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def _rng_states(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[Any, Any]:
    """(Python's state, numpy's (kind, pos, has_gauss, cached)) from an RNG file's metadata,
    once its tensors and metadata are checked; (None, what is wrong) otherwise."""
    ours = torch.get_rng_state()
    found = tensors.get("torch")
    if found is None or found.dtype != ours.dtype or found.shape != ours.shape:
        return None, f"torch's RNG state ({ours.numel()} bytes)"
    key = tensors.get("numpy")
    if key is None or key.dtype != torch.int64 or tuple(key.shape) != (624,):
        return None, "numpy's key (624 words)"
    if not bool(((key >= 0) & (key < 2**32)).all()):
        return None, "numpy's key (624 words)"
    try:
        kind, pos, has_gauss, cached = json.loads(metadata["numpy"])
        version, internal, gauss = json.loads(metadata["python"])
    except (KeyError, TypeError, ValueError):
        return None, "numpy's and Python's states in its metadata"
    numpy_ok = kind == "MT19937" and _is_word(pos) and pos <= 624 and has_gauss in (0, 1)
    if not numpy_ok or not isinstance(cached, float):
        return None, "numpy's state in its metadata"
    words = isinstance(internal, list) and len(internal) == 625 and all(map(_is_word, internal))
    gauss_ok = gauss is None or isinstance(gauss, float)
    if version != 3 or not words or internal[-1] > 624 or not gauss_ok:
        return None, "Python's state in its metadata"
    return (version, tuple(internal), gauss), (kind, pos, has_gauss, cached)
