"""`lrlora.app.checkpoint`: atomic step directories and RNG states without pickles."""

from __future__ import annotations

import random

import numpy as np
import torch

from lrlora.app import checkpoint


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
