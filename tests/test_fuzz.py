"""Fuzzing what the library reads back: an adapter directory's config, tensors, controller
state and optimizer state. Random and mutated contents either load or raise BadFileError
naming the file; never another exception, nothing written, and a loaded adapter never holds
more than its config's budget."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lrlora
from fuzz import FUZZ, contents, tree
from lrlora.budget import config_budget
from lrlora.inject import config_of
from tiny import bert_config, random_batches, tiny_bert

FILES = ["lrlora_config.json", "adapter.safetensors", "controller.json", "optimizer.json",
         "optimizer.safetensors"]  # fmt: skip


def _setup():
    model = lrlora.inject(tiny_bert(), bert_config())
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    return model, optimizer, lrlora.RankController(model, optimizer, total_steps=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A hardened adapter saved after two of four steps, with its controller and optimizer
    (what a hardened file holds is checked against the budget)."""
    model, optimizer, controller = _setup()
    for tokens, labels in random_batches(2):
        model(tokens, labels=labels).loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    controller.harden()
    path = tmp_path_factory.mktemp("fuzz") / "adapter"
    return lrlora.save(model, path, controller=controller, optimizer=optimizer)


def _fuzzed(saved: Path, tmp: str, name: str, data: st.DataObject) -> Path:
    path = Path(tmp) / "adapter"
    shutil.copytree(saved, path)
    valid = (path / name).read_bytes()
    document = json.loads(valid) if name.endswith(".json") else None
    (path / name).write_bytes(data.draw(contents(valid, document)))
    return path


def _within_budget(model) -> bool:
    layers = [layer for _, layer in lrlora.lora_layers(model)]
    hard = sum(max(layer.current_hard_rank(), 0) * layer.cost_per_rank for layer in layers)
    return hard <= config_budget(config_of(model), [layer.cost_per_rank for layer in layers])


@FUZZ
@given(name=st.sampled_from(FILES[:2]), data=st.data())
def test_load_takes_an_adapter_or_names_the_file(saved, name, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _fuzzed(saved, tmp, name, data)
        before = tree(Path(tmp))
        try:
            model = lrlora.load(tiny_bert(), path)
        except lrlora.BadFileError as err:
            assert err.path.parent == path
        else:
            assert _within_budget(model)
        assert tree(Path(tmp)) == before


@FUZZ
@given(name=st.sampled_from(FILES), data=st.data())
def test_resume_restores_a_state_or_names_the_file(saved, name, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _fuzzed(saved, tmp, name, data)
        before = tree(Path(tmp))
        model, optimizer, controller = _setup()
        try:
            lrlora.resume(path, model, optimizer, controller)
        except lrlora.BadFileError as err:
            assert err.path.parent == path
            assert controller.step_count == 0  # nothing was applied
        else:
            controller.harden()
            assert controller.adapter_params() <= controller.target_params
        assert tree(Path(tmp)) == before
