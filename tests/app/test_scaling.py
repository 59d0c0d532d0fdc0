"""`lrlora train` under torchrun and accelerate launch (DDP, gloo on CPU): two processes
with a per-process batch b end where one process with batch 2b does, and only the main
process writes. Every process holding the same rho, tau and allowance at every step is
checked inside the controller (a difference raises; see test_fsdp.py for that check)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("matplotlib")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lrlora.app.train import TrainArgs, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = dict(max_steps=8, train_limit=32, eval_limit=16, budget_rank=2, lr=1e-2,
                rank_lr=0.3, log_every=2, log_ranks_every=2, rebalance_every=2,
                precision="fp32")  # fmt: skip  # 'auto' may take bf16, which does not add up alike
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def no_dropout_bert_dir(tiny_bert_dir, tmp_path_factory) -> str:
    """The tiny BERT without dropout: two processes cannot draw the masks one process
    draws, so only a deterministic model can end exactly where the single process does."""
    path = tmp_path_factory.mktemp("no-dropout") / "bert"
    shutil.copytree(tiny_bert_dir, path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def flags(settings: dict) -> list[str]:
    return [item for k, v in settings.items() for item in ("--" + k.replace("_", "-"), str(v))]


def launch(launcher: list[str], model: str, out: Path) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "lrlora", "train", "--model", model, "--output-dir", str(out),
               "--batch-size", "2", *flags(SETTINGS)]  # fmt: skip
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def assert_matches_one_process(run: Path, model: str, tmp_path: Path) -> None:
    single = tmp_path / "single"
    train(TrainArgs(model=model, output_dir=str(single), batch_size=4, **SETTINGS))
    ranks, expected = (json.loads((r / "ranks.json").read_text()) for r in (run, single))
    for point, want in zip(ranks["trajectory"], expected["trajectory"], strict=True):
        assert point["step"] == want["step"]
        assert point["rho"] == pytest.approx(want["rho"], abs=1e-4)
        assert point["hard_rank"] == want["hard_rank"]
    assert [r["hard_rank"] for r in ranks["layers"]] == [r["hard_rank"] for r in expected["layers"]]
    assert any(rho != 2.0 for p in expected["trajectory"] for rho in p["rho"].values())  # moved
    metrics, want = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert metrics["metrics"] == pytest.approx(want["metrics"], abs=1e-4)
    assert metrics["train_loss"] == pytest.approx(want["train_loss"], abs=1e-4)
    assert metrics["eval_rows"] == want["eval_rows"] == 16
    assert metrics["adapter_params"] <= metrics["budget_params"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run.name, "single"])


def test_torchrun_two_processes_match_one_with_the_same_global_batch(no_dropout_bert_dir, tmp_path):
    run = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = launch(torchrun, no_dropout_bert_dir, run)
    assert result.stdout.count("run directory:") == 1  # only the main process reports
    assert_matches_one_process(run, no_dropout_bert_dir, tmp_path)


@pytest.mark.slow
def test_accelerate_launch_two_processes_match_one(no_dropout_bert_dir, tmp_path):
    run = tmp_path / "accelerate"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                  "--num_processes=2", "--num_machines=1", "--mixed_precision=no",
                  "--dynamo_backend=no", "--main_process_port=0"]  # fmt: skip
    result = launch(accelerate, no_dropout_bert_dir, run)
    assert result.stdout.count("run directory:") == 1
    assert_matches_one_process(run, no_dropout_bert_dir, tmp_path)
