"""`lrlora.app.checkpoint`: atomic step directories and RNG states without pickles."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lrlora.app import checkpoint
from lrlora.cli import main


def _write(root, step: int, fail: bool = False):
    tmp = checkpoint.begin(root, step)
    (tmp / "state.json").write_text(str(step))
    if fail:  # a crash (or a kill) before the rename
        return None
    return checkpoint.publish(tmp, root)


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path):
    assert checkpoint.latest(tmp_path / "none") is None
    first = _write(tmp_path, 8)
    assert first == tmp_path / "step-00000008" and checkpoint.step_of(first) == 8
    _write(tmp_path, 16, fail=True)
    assert checkpoint.latest(tmp_path) == first  # the half-written one is invisible
    assert (first / "state.json").read_text() == "8"
    third = _write(tmp_path, 24)
    assert checkpoint.latest(tmp_path) == third
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000024"]  # old ones and debris gone


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.normal()  # leaves numpy with a cached gaussian
    checkpoint.save_rng_state(tmp_path / "rng.safetensors")
    drawn = torch.rand(3), np.random.normal(size=3), random.random()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    checkpoint.load_rng_state(tmp_path / "rng.safetensors")
    again = torch.rand(3), np.random.normal(size=3), random.random()
    assert torch.equal(drawn[0], again[0])
    assert np.array_equal(drawn[1], again[1]) and drawn[2] == again[2]


# -- a damaged checkpoint on --resume ------------------------------------------------------------
TINY = ["--max-steps", "4", "--batch-size", "4", "--train-limit", "16", "--eval-limit", "8",
        "--budget-rank", "2", "--checkpoint-every", "2", "--log-every", "2"]  # fmt: skip
STEP = "step-00000002"


@pytest.fixture(scope="module")
def kept_checkpoints(tiny_bert_dir, tmp_path_factory) -> Path:
    """The checkpoints of a finished tiny run, kept: ``<root>/step-00000002``."""
    root = tmp_path_factory.mktemp("kept")
    argv = ["train", "--model", tiny_bert_dir, "--output-dir", str(root / "run"), *TINY]
    assert main([*argv, "--keep-checkpoints"]) == 0
    return root / "run.checkpoints"


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(len(path.read_bytes()) * keep)])


def _reshape_first_factor(path: Path) -> None:
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("lora_A"))
    tensors[key] = tensors[key][:1]
    save_file(tensors, str(path))


def _shorten_torch_rng(path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["torch"] = tensors["torch"][:100]
    save_file(tensors, str(path), metadata=metadata)


DAMAGE = {
    "run.json incomplete": ("run.json", lambda p: _truncate(p), "is not valid JSON"),
    "run.json empty": ("run.json", lambda p: p.write_text(""), "is empty"),
    "run.json wrong type": ("run.json", lambda p: _edit_json(p, world_size="1"),
                            "['world_size'] is '1', not an integer"),
    "trainer state invalid": ("trainer_state.json", lambda p: p.write_text("{not json"),
                              "trainer_state.json:1: is not valid JSON"),
    "trainer state missing": ("trainer_state.json", Path.unlink, "is missing"),
    "trainer state other step": ("trainer_state.json", lambda p: _edit_json(p, global_step=3),
                                 f"global_step is 3, but the checkpoint is {STEP}"),
    "trainer state path": ("trainer_state.json",
                           lambda p: _edit_json(p, best_model_checkpoint="/etc"),
                           "['best_model_checkpoint'] is '/etc', not null"),
    "scheduler wrong type": ("scheduler.json", lambda p: _edit_json(p, base_lrs="x"),
                             "['base_lrs'] is 'x', not a list"),
    "trajectory not a list": ("trajectory.json", lambda p: p.write_text("{}"),
                              "the top level is {}, not a list"),
    "optimizer truncated": ("optimizer.safetensors", _truncate,
                            "is not a complete safetensors file"),
    "optimizer empty": ("optimizer.safetensors", lambda p: p.write_bytes(b""),
                        "is not a complete safetensors file"),
    "optimizer json incomplete": ("optimizer.json", _truncate, "is not valid JSON"),
    "model missing": ("model", shutil.rmtree, "model: is missing"),
    "adapter truncated": ("model/adapter.safetensors", lambda p: _truncate(p, 0.9),
                          "is not a complete safetensors file"),
    "adapter wrong shape": ("model/adapter.safetensors", _reshape_first_factor,
                            "lora_A of shape (1, 32), where this model needs (4, 32)"),
    "controller tampered": ("model/controller.json", lambda p: _edit_json(p, step_count=-1),
                            "step_count is -1, outside [0, 4]"),
    "config invalid": ("model/lrlora_config.json", lambda p: p.write_text("[1, 2"),
                       "is not valid JSON"),
    "rng missing": ("rng-0.safetensors", Path.unlink, "is missing"),
    "rng short": ("rng-0.safetensors", _shorten_torch_rng, "does not hold torch's RNG state"),
    "a pickle beside": ("scaler.pt", lambda p: p.write_bytes(pickle.dumps({"scale": 1.0})),
                        "is not a file lrlora writes in a checkpoint (nothing pickled"),
}  # fmt: skip


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("kind", [*DAMAGE, "earlier checkpoint", "step-abc"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_what_to_do(
    kind, kept_checkpoints, tiny_bert_dir, tmp_path, capsys
):
    """Each kind of damage to the checkpoint --resume would continue from is refused before
    training, in one error line naming the file and saying what to do (resume from the
    previous checkpoint, or start over), and nothing on disk changes."""
    root = tmp_path / "run.checkpoints"
    shutil.copytree(kept_checkpoints, root)
    name, damage, message = DAMAGE.get(kind, DAMAGE["run.json incomplete"])
    if kind == "earlier checkpoint":
        shutil.copytree(root / STEP, root / "step-00000001")
    if kind == "step-abc":
        (root / "step-abc").mkdir()
        message = "holds files lrlora did not write (step-abc)"
    else:
        damage(root / STEP / name)
    before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*")
              if p.is_file()}  # fmt: skip
    argv = ["train", "--model", tiny_bert_dir, "--output-dir", str(tmp_path / "run"), *TINY]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error" in line.lower()]
    assert line.startswith("lrlora: error: ") and "Traceback" not in err
    assert message in line
    if kind == "earlier checkpoint":
        assert f"move it out of {root} to resume from the previous checkpoint step-00000001" in line
    elif kind != "step-abc":
        assert f"{root / STEP / name}" in line
        assert f"{STEP} is damaged and there is no earlier one: rerun without --resume" in line
    after = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*")
             if p.is_file()}  # fmt: skip
    assert after == before and not (tmp_path / "run").exists()
