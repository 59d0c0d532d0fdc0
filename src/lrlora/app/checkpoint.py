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
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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


def read_json(path: Path) -> object:
    return json.loads(path.read_text())


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
    """Restore the states written by :func:`save_rng_state`."""
    import numpy as np

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = json.loads(metadata["numpy"])
    key = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, key, pos, has_gauss, cached))
    version, internal, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss))
