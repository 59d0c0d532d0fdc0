"""Fuzzing what `lrlora train` and `lrlora report` read: the GLUE and commonsense data files,
a run directory's JSON files and a checkpoint's files. Random and mutated contents either
load or raise lrlora's own error naming the file (DataError, BadFileError, CheckpointError);
never another exception, and nothing on disk changes."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from transformers import TrainerState

from fuzz import FUZZ, contents, tree
from lrlora.app import checkpoint, runs
from lrlora.app.tasks import DataError
from lrlora.app.tasks.commonsense import load_items
from lrlora.app.tasks.glue import (
    parse_cola,
    parse_mrpc,
    parse_qnli,
    parse_rte,
    parse_sst2,
    parse_stsb,
)
from lrlora.util import BadFileError

GLUE = {
    parse_sst2: "label\ttext_a\n1\ta fine film\n0\tdull\n",
    parse_mrpc: "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe left.\tHe went.\n",
    parse_rte: "sentence1\tsentence2\tlabel\tidx\nA cat.\tAn animal.\tentailment\t0\n",
    parse_qnli: "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tnot_entailment\n",
    parse_stsb: "main\tf\t2012\t1\t4.2\tA man.\tA person.\textra\n",
    parse_cola: "src\t1\t\tThe book was read.\n",
}
BOOLQ = {
    "instruction": "Please answer true or false, question: is it?\n\nAnswer format: true/false",
    "input": "",
    "output": "the correct answer is true",
    "answer": "true",
}


@FUZZ
@given(parser=st.sampled_from(list(GLUE)), data=st.data())
def test_glue_files_load_or_name_the_file_and_line(parser, data):
    valid = GLUE[parser].encode()
    raw = data.draw(contents(valid))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.tsv"
        path.write_bytes(raw)
        before = tree(Path(tmp))
        try:
            examples = parser(path)
        except DataError as err:
            assert err.path == path and str(err).startswith(f"{path}")
        else:
            assert all(e.text_a and isinstance(e.label, (int, float)) for e in examples)
        assert tree(Path(tmp)) == before


@FUZZ
@given(data=st.data())
def test_commonsense_files_load_or_name_the_file(data):
    valid = json.dumps([BOOLQ, BOOLQ]).encode()
    raw = data.draw(contents(valid, [BOOLQ, BOOLQ]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "commonsense" / "boolq" / "test.json"
        path.parent.mkdir(parents=True)
        path.write_bytes(raw)
        before = tree(Path(tmp))
        try:
            items = load_items("boolq", "test", tmp)
        except DataError as err:
            assert err.path == path
        else:
            assert all(item.options[item.label] == item.answer for item in items)
        assert tree(Path(tmp)) == before


# -- a run directory ------------------------------------------------------------------------------
RUN = {
    "config.json": {"args": {"task": "sst2", "method": "lr-lora", "budget_rank": 2, "seed": 0}},
    "metrics.json": {
        "metrics": {"accuracy": 50.0, "score": 50.0}, "eval_split": "dev", "task": "sst2",
        "method": "lr-lora", "eval_rows": 8, "train_rows": 16, "steps": 4,
        "adapter_params": 256, "head_params": 66, "budget_params": 256, "train_time_s": 1.0,
        "steps_per_second": 4.0, "train_loss": 0.7, "wall_time_s": 2.0,
    },
    "ranks.json": {
        "layers": [{"name": "l.0.query", "kind": "attention", "role": "query", "depth": 0,
                    "r_max": 4, "rho": 2.0, "hard_rank": 2, "params": 128}],
        "trajectory": [{"step": 0, "rho": {"l.0.query": 2.0}, "tau": 1.0}],
    },
    "history.json": [{"loss": 0.7, "step": 2}],
}  # fmt: skip


@FUZZ
@given(name=st.sampled_from(list(RUN)), data=st.data())
def test_a_run_directory_reads_back_or_names_the_file(name, data):
    valid = json.dumps(RUN[name]).encode()
    raw = data.draw(contents(valid, RUN[name]))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        for other, document in RUN.items():
            (run_dir / other).write_text(json.dumps(document))
        (run_dir / name).write_bytes(raw)
        before = tree(Path(tmp))
        try:
            run = runs.read_run(run_dir)
        except BadFileError as err:
            assert err.path == run_dir / name
        else:
            assert runs.format_summary(run_dir, run)
        assert tree(Path(tmp)) == before


# -- a checkpoint -------------------------------------------------------------------------------
def _checkpoint(root: Path) -> Path:
    """A checkpoint of step 2 of a 4-step run, as the Trainer and lrlora write it (the
    model's own files are left out: lrlora.resume is fuzzed with the library)."""
    step = root / "step-00000002"
    (step / "model").mkdir(parents=True)
    state = TrainerState(global_step=2, max_steps=4, epoch=0.5, log_history=[{"loss": 0.7}])
    state.save_to_json(str(step / "trainer_state.json"))
    documents = {
        "run.json": {"args": {"lr": 1e-3, "rank_lr": 0.02}, "world_size": 1},
        "scheduler.json": {"base_lrs": [1e-3], "last_epoch": 2, "_step_count": 3},
        "trajectory.json": [{"step": 0, "rho": {"l.0.query": 2.0}}],
        "optimizer.json": {"param_groups": [{"params": [0], "lr": 1e-3}], "scalars": {}},
    }
    for name, document in documents.items():
        (step / name).write_text(json.dumps(document))
    save_file({"0.exp_avg": torch.zeros(3)}, str(step / "optimizer.safetensors"))
    checkpoint.save_rng_state(step / "rng-0.safetensors")
    return step


FILES = ["run.json", "trainer_state.json", "scheduler.json", "trajectory.json",
         "optimizer.json", "optimizer.safetensors", "rng-0.safetensors"]  # fmt: skip


@pytest.fixture
def rng_kept():
    """The RNG states as they were: a fuzzed RNG file that loads sets them."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


@FUZZ
@given(name=st.sampled_from(FILES), data=st.data())
def test_a_checkpoint_verifies_or_names_the_damaged_file(name, data, rng_kept):
    with tempfile.TemporaryDirectory() as tmp:
        step = _checkpoint(Path(tmp))
        valid = (step / name).read_bytes()
        document = json.loads(valid) if name.endswith(".json") else None
        (step / name).write_bytes(data.draw(contents(valid, document)))
        before = tree(Path(tmp))
        try:
            checkpoint.verify(step, world_size=1, total_steps=4)
            checkpoint.read_run(step)
            checkpoint.load_rng_state(step / "rng-0.safetensors")
        except checkpoint.CheckpointError as err:
            assert err.path == step / name
            assert "rerun without --resume and with --overwrite" in str(err)
        assert tree(Path(tmp)) == before
