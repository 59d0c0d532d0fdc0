"""The `lrlora` command: help for every subcommand, flags generated from TrainArgs, errors
reported without a traceback (exit 2), `train` then `report` on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lrlora.app.train import TrainArgs
from lrlora.cli import SUBCOMMANDS, build_parser, main

os.environ.setdefault("HF_HUB_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("single_thread")


def lrlora(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lrlora", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_help_lists_every_subcommand():
    result = lrlora("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_subcommand_has_help(command):
    result = lrlora(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: lrlora {command}" in result.stdout


def test_train_flags_come_from_train_args(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainArgs):
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(f.metadata["help"].split()[:4]) in text
    namespace = build_parser().parse_args(
        ["train", "--overwrite", "--target-modules", "query", "value", "--lr", "0.01"]
    )
    assert (namespace.overwrite, namespace.target_modules, namespace.lr) == (
        True, ["query", "value"], 0.01)  # fmt: skip
    assert not hasattr(namespace, "seed")  # unset flags leave the dataclass default


def test_bad_argument_values_exit_2(capsys):
    assert main(["train", "--budget-rank", "9", "--r-max", "8"]) == 2
    assert "choose a budget rank in (0, 8]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--method", "sora"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tau-start", "0.01", "--tau-end", "0.5"], "temperature must fall"),
        (["--init-rank", "20"], "init_rank must be in (0, r_max=8]"),
        (["--rank-lr", "-1"], "rank_lr must be positive"),
        (["--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["--dropout", "1.0"], "dropout must be in [0, 1)"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--lr=-1e-3"], "--lr must be positive, got -0.001"),
        (["--rank-lr", "nan"], "--rank-lr must be a finite number, got nan"),
        (["--max-steps", "0"], "--max-steps must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be positive, got 0.0"),
        (["--epochs", "nan"], "--epochs must be a finite number"),
        (["--decay-end-frac", "1.5"], "decay_end_frac"),
    ],
)
def test_bad_lrlora_settings_are_refused_by_the_config_before_loading(
    argv, message, tmp_path, capsys
):
    """The LR-LoRA settings are checked by LRLoRAConfig itself, before any data or model is
    loaded (the data directory here is empty): one error line, exit 2, no run directory."""
    run = tmp_path / "run"
    assert main(["train", *argv, "--data-dir", str(tmp_path), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrlora: error: ")
    assert message in err and not run.exists()


def test_missing_data_file_is_reported_without_traceback(tmp_path, capsys):
    (tmp_path / "glue").mkdir()
    code = main(["train", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "glue/sst2/train.tsv" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def one_error_line(err: str) -> str:
    """The one ``lrlora: error:`` line of a failed command (after any progress output)."""
    (line,) = [line for line in err.splitlines() if "error" in line.lower()]
    assert line.startswith("lrlora: error: ") and "Traceback" not in err
    return line


def test_a_data_file_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys):
    train_tsv = tmp_path / "glue" / "sst2" / "train.tsv"
    train_tsv.parent.mkdir(parents=True)
    train_tsv.write_bytes(b"label\ttext_a\n1\tgood\n0\t\xff\n")
    assert main(["train", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "r")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{train_tsv}:3: is not utf-8 text" in line and not (tmp_path / "r").exists()


def files_under(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("task", ["sst2", "commonsense"])
def test_a_model_directory_that_is_not_a_model_is_one_line(task, tmp_path, capsys):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "notes.txt").write_text("mine")
    before = files_under(tmp_path)
    argv = ["train", "--task", task, "--model", str(tmp_path / "not-a-model"),
            "--output-dir", str(tmp_path / "run"), "--train-limit", "8"]  # fmt: skip
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not-a-model holds no config.json" in line and "save_pretrained" in line
    assert files_under(tmp_path) == before and not (tmp_path / "run").exists()


def test_unknown_target_modules_are_reported(tiny_bert_dir, tmp_path, capsys):
    argv = ["train", "--model", tiny_bert_dir, "--target-modules", "q_proj",
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "matched no" in err and "query" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target-modules", "query", "kee"], "['kee'] matched no"),  # one typo of two
        # more rank than a 32-wide layer has, named by the flag that asked for it
        (["--budget-rank", "500"], "--budget-rank: rank 500 is more than"),
        (["--method", "lora", "--budget-rank", "40", "--target-modules", "query"], "can hold"),
    ],
)
def test_targets_and_ranks_the_model_cannot_take_are_one_line_errors(
    flags, message, tiny_bert_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(["train", "--model", tiny_bert_dir, "--output-dir", str(run), *flags]) == 2
    err = capsys.readouterr().err  # after the model loaded: its progress bar comes first
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith("lrlora: error: ") and message in line and "Traceback" not in err
    assert not run.exists() and not run.with_name("run.checkpoints").exists()


def test_train_then_report(tiny_bert_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", tiny_bert_dir, "--output-dir", str(run), "--max-steps", "4",
            "--batch-size", "4", "--train-limit", "16", "--eval-limit", "8",
            "--budget-rank", "2", "--log-ranks-every", "2"]  # fmt: skip
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "sst2 dev (8 rows), lr-lora: accuracy" in summary
    assert "of LoRA at rank 2" in summary and "attention mean" in summary
    assert main(argv) == 2  # a finished run is never overwritten silently
    assert "--overwrite" in capsys.readouterr().err

    for png in (run / "figures").iterdir():
        png.unlink()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == "\n".join(summary.strip().splitlines()[-6:])
    assert sorted(p.name for p in (run / "figures").iterdir()) == [
        "rank_heatmap.png", "rank_trajectory.png"]  # fmt: skip


def test_report_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished lrlora run directory" in capsys.readouterr().err


def written_run(path: Path) -> Path:
    """A run directory as `lrlora train` writes it, by hand (two layers, two points)."""
    rows = [{"name": f"encoder.layer.{i}.attention.self.query", "kind": "attention",
             "role": "query", "depth": i, "r_max": 4, "rho": 2.0, "hard_rank": 2,
             "params": 128} for i in range(2)]  # fmt: skip
    points = [{"step": s, "rho": {r["name"]: 2.0 for r in rows}, "tau": 1.0,
               "adapter_params": 256} for s in (0, 4)]  # fmt: skip
    metrics = {"metrics": {"accuracy": 50.0, "score": 50.0}, "eval_split": "dev",
               "task": "sst2", "method": "lr-lora", "eval_rows": 8, "train_rows": 16,
               "steps": 4, "adapter_params": 256, "head_params": 66, "budget_params": 256,
               "train_time_s": 1.0, "steps_per_second": 4.0, "train_loss": 0.7,
               "wall_time_s": 2.0}  # fmt: skip
    args = {"task": "sst2", "method": "lr-lora", "budget_rank": 2, "seed": 0}
    files = {"config.json": {"args": args}, "metrics.json": metrics, "history.json": [],
             "ranks.json": {"layers": rows, "trajectory": points}}  # fmt: skip
    path.mkdir()
    for name, data in files.items():
        (path / name).write_text(json.dumps(data))
    return path


def test_report_never_writes_through_a_symlinked_figures_directory(tmp_path, capsys):
    run, outside = written_run(tmp_path / "run"), tmp_path / "outside"
    assert main(["report", str(run)]) == 0
    assert sorted(p.name for p in (run / "figures").iterdir()) == [
        "rank_heatmap.png", "rank_trajectory.png"]  # fmt: skip
    shutil.rmtree(run / "figures")
    outside.mkdir()
    (run / "figures").symlink_to(outside)
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{run / 'figures'}: is a symbolic link to {outside}" in line
    assert "replace it with a plain directory" in line and not any(outside.iterdir())


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("metrics.json", '{"metrics": ', "metrics.json:1: is not valid JSON"),
        ("metrics.json", "", "metrics.json: is empty"),
        ("config.json", '{"args": {"task": "sst2"}}', "config.json: ['args'] has no 'method'"),
        ("ranks.json", '{"layers": [{"name": 3}], "trajectory": []}',
         "ranks.json: ['layers'][0] has no 'kind'"),
        ("metrics.json", None, "metrics.json: ['budget_params'] is 'x', not an integer"),
    ],
)  # fmt: skip
def test_report_on_edited_run_files_is_one_line(name, text, message, tmp_path, capsys):
    run = written_run(tmp_path / "run")
    if text is None:
        metrics = json.loads((run / name).read_text())
        text = json.dumps({**metrics, "budget_params": "x"})
    (run / name).write_text(text)
    before = files_under(tmp_path)
    assert main(["report", str(run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line and "train the run again" in line
    assert files_under(tmp_path) == before


def test_overwrite_replaces_only_a_run_directory(tmp_path, monkeypatch, capsys):
    """`--output-dir . --overwrite` would replace the working directory as a whole, and any
    other directory that is not a run would lose its files: both are refused."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "mine")
    before = files_under(tmp_path)
    for output, message in [
        (".", "is the working directory or holds it"),
        ("..", "is the working directory or holds it"),
        (str(tmp_path / "mine"), "is the working directory or holds it"),
    ]:
        assert main(["train", "--output-dir", output, "--overwrite"]) == 2
        assert message in one_error_line(capsys.readouterr().err)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--output-dir", "mine", "--overwrite"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "mine holds files that are not an lrlora run (notes.txt)" in line
    assert files_under(tmp_path) == before


def test_demo_prints_its_rank_report(capsys):
    assert main(["demo", "--steps", "30"]) == 0
    assert "total adapter parameters" in capsys.readouterr().out
