"""`lrlora train` survives faults: a killed run resumes from its last checkpoint to the
result of an uninterrupted one; a non-finite loss stops with the step, the bad tensors and
the checkpoint to resume from; a resume refuses other settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("matplotlib")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lrlora.app import checkpoint  # noqa: E402
from lrlora.app.runs import RunExistsError  # noqa: E402
from lrlora.app.train import (  # noqa: E402
    NonFiniteLossError,
    ResumeError,
    TrainArgs,
    check_checkpoints,
    resume_point,
    train,
)
from lrlora.controller import RankController  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

# 40 rows in batches of 4: 10 steps an epoch, so the run crosses two epoch boundaries and
# the kill (after step 11) falls after the checkpoint of step 8, mid-epoch.
SETTINGS = dict(max_steps=24, batch_size=4, train_limit=40, eval_limit=16, budget_rank=2,
                lr=5e-3, rank_lr=0.2, log_every=4, log_ranks_every=4, rebalance_every=4,
                checkpoint_every=8, precision="fp32")  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# Runs `lrlora train` and parks it before step `stop_after + 1`, touching `marker`.
DRIVER = """
import sys, time
import lrlora.app.trainer
stop_after, marker = int(sys.argv[1]), sys.argv[2]
step = lrlora.app.trainer.RunTrainer.training_step
def training_step(self, *args, **kwargs):
    if self.state.global_step == stop_after:
        open(marker, "w").close()
        time.sleep(600)  # the test kills the process here
    return step(self, *args, **kwargs)
lrlora.app.trainer.RunTrainer.training_step = training_step
from lrlora.cli import main
sys.exit(main(sys.argv[3:]))
"""


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def read(run: Path, name: str):
    return json.loads((run / name).read_text())


def assert_same_run(run: Path, reference: Path) -> None:
    ranks, expected = read(run, "ranks.json"), read(reference, "ranks.json")
    assert [r["hard_rank"] for r in ranks["layers"]] == [r["hard_rank"] for r in expected["layers"]]
    assert [p["step"] for p in ranks["trajectory"]] == [p["step"] for p in expected["trajectory"]]
    for point, want in zip(ranks["trajectory"], expected["trajectory"], strict=True):
        assert point["rho"] == pytest.approx(want["rho"], abs=1e-5)
        assert point["hard_rank"] == want["hard_rank"]
    scores, want = read(run, "metrics.json")["metrics"], read(reference, "metrics.json")["metrics"]
    assert scores == pytest.approx(want, abs=1e-5)
    losses = {h["step"]: h["loss"] for h in read(run, "history.json") if "loss" in h}
    want = {h["step"]: h["loss"] for h in read(reference, "history.json") if "loss" in h}
    assert losses == pytest.approx(want, abs=1e-5)


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_bert_dir, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "parked"
    command = ["train", "--model", tiny_bert_dir, "--output-dir", str(run), *flags(SETTINGS)]
    driver = [sys.executable, "-c", DRIVER, "11", str(marker), *command]
    process = subprocess.Popen(driver, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), process.communicate(timeout=5)[0].decode()[-3000:]
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert not run.exists()
    assert checkpoint.latest(tmp_path / "run.checkpoints").name == "step-00000008"

    resumed = subprocess.run([sys.executable, "-m", "lrlora", *command, "--resume"], env=ENV,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "step-00000008" in resumed.stdout
    assert not (tmp_path / "run.checkpoints").exists()  # deleted once the run is published

    train(TrainArgs(model=tiny_bert_dir, output_dir=str(tmp_path / "reference"), **SETTINGS))
    assert_same_run(run, tmp_path / "reference")


def test_non_finite_loss_names_the_layer_and_keeps_the_last_checkpoint(
    tiny_bert_dir, tmp_path, monkeypatch
):
    poisoned = []
    step = RankController.step

    def poisoning_step(self):
        step(self)
        if self.step_count == 5:
            with torch.no_grad():  # after pruning (step 3 of 8) B is what trains
                self.layers[3].lora_B.fill_(float("nan"))
            poisoned.append(self.names[3])

    monkeypatch.setattr(RankController, "step", poisoning_step)
    settings = dict(SETTINGS, max_steps=8, checkpoint_every=2, log_every=2)
    args = TrainArgs(model=tiny_bert_dir, output_dir=str(tmp_path / "run"), **settings)
    with pytest.raises(NonFiniteLossError) as caught:
        train(args)
    last_good = tmp_path / "run.checkpoints" / "step-00000004"
    error = caught.value
    assert error.step == 6 and error.bad[0] == f"{poisoned[0]}.lora_B"
    assert "loss is nan at step 6" in str(error)
    assert f"Non-finite: {poisoned[0]}.lora_B," in str(error)
    assert f"The last good checkpoint is {last_good}" in str(error) and "--resume" in str(error)
    assert [p.name for p in last_good.parent.iterdir()] == [last_good.name]
    assert not (tmp_path / "run").exists()

    monkeypatch.undo()  # resume as the message says, with a lower learning rate
    logged = {
        h["step"]: h["learning_rate"] for h in read(last_good, "trainer_state.json")["log_history"]
    }
    resumed = dict(settings, lr=settings["lr"] / 10)
    train(TrainArgs(model=tiny_bert_dir, output_dir=str(tmp_path / "run"), resume=True, **resumed))
    history = {h["step"]: h["learning_rate"] for h in read(tmp_path / "run", "history.json")
               if "learning_rate" in h}  # fmt: skip
    linear = 2 * logged[4] - logged[2]  # the schedule decays linearly after the warm-up
    assert history[6] == pytest.approx(linear / 10)


def test_resume_refuses_other_settings_and_fresh_runs_refuse_old_checkpoints(tmp_path):
    args = TrainArgs(output_dir=str(tmp_path / "run"), max_steps=24, checkpoint_every=8)
    saved = checkpoint.begin(args.checkpoint_dir, 8)
    (saved / "run.json").write_text(json.dumps({"args": args.to_dict(), "world_size": 2}))
    saved = checkpoint.publish(saved, args.checkpoint_dir)
    with pytest.raises(RunExistsError, match="pass --resume to continue it"):
        check_checkpoints(args)
    resume = dict(output_dir=str(tmp_path / "run"), checkpoint_every=8, resume=True)
    assert resume_point(TrainArgs(max_steps=24, **resume), world_size=2) == saved
    assert resume_point(TrainArgs(max_steps=24, lr=1e-4, **resume), world_size=2) == saved
    with pytest.raises(ResumeError, match=r"--max-steps 24 \(now 30\)"):
        resume_point(TrainArgs(max_steps=30, **resume), world_size=2)
    with pytest.raises(ResumeError, match="written by 2 processes and this run has 1"):
        resume_point(TrainArgs(max_steps=24, **resume), world_size=1)


def test_a_fresh_run_never_deletes_what_it_did_not_write(tmp_path):
    """A `<output dir>.checkpoints/` holding user files is refused, not deleted; clearing a
    checkpoint root removes only the step directories lrlora wrote."""
    args = TrainArgs(output_dir=str(tmp_path / "run"), max_steps=24)
    notes = args.checkpoint_dir / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    (args.checkpoint_dir / "step-abc").mkdir()  # not a step number: not ours either
    with pytest.raises(RunExistsError, match=r"files lrlora did not write \(notes.txt, step-abc\)"):
        check_checkpoints(args)
    assert checkpoint.latest(args.checkpoint_dir) is None
    saved = checkpoint.publish(checkpoint.begin(args.checkpoint_dir, 8), args.checkpoint_dir)
    checkpoint.begin(args.checkpoint_dir, 16)  # a crash's leftover staging directory
    checkpoint.clear(args.checkpoint_dir)
    assert not saved.exists() and notes.read_text() == "mine"
    assert sorted(p.name for p in args.checkpoint_dir.iterdir()) == ["notes.txt", "step-abc"]
    notes.unlink()
    (args.checkpoint_dir / "step-abc").rmdir()
    checkpoint.clear(args.checkpoint_dir)
    assert not args.checkpoint_dir.exists()
