"""The run directory ``lrlora train`` writes, and ``lrlora report``, which reads it back.

A run directory holds::

    config.json     {"args": TrainArgs, "resolved": model path, targets, heads, steps, ...,
                     "versions": torch/transformers/peft/lrlora/python, "command": argv}
    metrics.json    final evaluation metrics, adapter / head / budget parameters, timings
    ranks.json      {"layers": rank rows (rank_report keys), "trajectory": rank snapshots}
    history.json    the Trainer's log history (loss, learning rate, tau, lambda, evaluations)
    adapter/        a stock PEFT adapter (PeftModel.from_pretrained loads it)
    figures/        rank_heatmap.png, rank_trajectory.png

It is built in a hidden temporary directory beside its final place and renamed into place
when complete, so a crash or an interrupt never leaves a half-written run.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path
from typing import Any

from ..util import publish_dir, write_json_atomic
from .models import default_cache_dir
from .plots import rank_heatmap, rank_trajectories

JSON_FILES = ("config.json", "metrics.json", "ranks.json", "history.json")
FIGURES = {"heatmap": "figures/rank_heatmap.png", "trajectory": "figures/rank_trajectory.png"}


class RunExistsError(FileExistsError):
    """The run directory already holds a run and ``overwrite`` is off."""


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty directory unless ``overwrite``."""
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        what = "a finished run" if (path / "metrics.json").is_file() else "files"
        raise RunExistsError(
            f"{path} already holds {what}; pass --overwrite to replace it or choose "
            "another --output-dir."
        )


def write_run(staging: Path, files: dict[str, Any]) -> list[Path]:
    """Write the JSON files (name -> data) into ``staging`` and draw the figures there."""
    for name, data in files.items():
        write_json_atomic(staging / name, data)
    return make_figures(staging, files["ranks.json"], _title(files["config.json"]))


def publish(staging: Path, final: Path, overwrite: bool) -> None:
    check_run_dir(final, overwrite)  # again: another run may have finished meanwhile
    publish_dir(staging, final)


def make_figures(run_dir: Path, ranks: dict[str, Any], title: str) -> list[Path]:
    """The rank heat map and the rank trajectories of a run."""
    rows, trajectory = ranks["layers"], ranks["trajectory"]
    return [
        rank_heatmap(rows, run_dir / FIGURES["heatmap"], title=f"{title}: final ranks"),
        rank_trajectories(trajectory, rows, run_dir / FIGURES["trajectory"], title=title),
    ]


def _title(config: dict[str, Any]) -> str:
    args = config["args"]
    return f"{args['task']} {args['method']} r{args['budget_rank']} seed {args['seed']}"


def read_run(run_dir: Path) -> dict[str, Any]:
    """The JSON files of a finished run, by name."""
    missing = [name for name in JSON_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} is not a finished lrlora run directory: {', '.join(missing)} missing."
        )
    return {name: json.loads((run_dir / name).read_text()) for name in JSON_FILES}


def report(run_dir: str | Path) -> str:
    """Regenerate a run's figures and return its summary."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    make_figures(run_dir, run["ranks.json"], _title(run["config.json"]))
    return format_summary(run_dir, run)


def _mean_ranks(rows: list[dict]) -> str:
    parts = []
    for kind in ("attention", "mlp", "other"):
        ranks = [row["hard_rank"] for row in rows if row["kind"] == kind]
        if ranks:
            parts.append(f"{kind} mean {sum(ranks) / len(ranks):.2f} ({len(ranks)} layers)")
    return ", ".join(parts)


def format_summary(run_dir: Path, run: dict[str, Any]) -> str:
    """What a finished run achieved, at what size, where its rank went and its files."""
    args, m = run["config.json"]["args"], run["metrics.json"]
    scores = ", ".join(f"{k} {v:.2f}" for k, v in m["metrics"].items() if k != "score")
    share = m["adapter_params"] / m["budget_params"]
    ranks = "learned ranks" if args["method"] in ("lr-lora", "adalora") else "ranks"
    lines = [
        f"{args['task']} {m['eval_split']} ({m['eval_rows']} rows), {args['method']}: {scores}",
        f"adapter parameters {m['adapter_params']:,} = {share:.1%} of LoRA at rank "
        f"{args['budget_rank']} ({m['budget_params']:,}); head {m['head_params']:,} (separate)",
        f"{ranks}: {_mean_ranks(run['ranks.json']['layers'])}",
        f"trained {m['steps']} steps on {m['train_rows']:,} rows in {m['train_time_s']:.0f} s "
        f"({m['steps_per_second']:.2f} steps/s), mean loss {m['train_loss']:.4f}; "
        f"wall time {m['wall_time_s']:.0f} s",
        f"run directory: {run_dir}",
        "figures: " + ", ".join(str(run_dir / f) for f in FIGURES.values()),
    ]
    return "\n".join(lines)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def portable_path(path: str) -> str:
    """``<site-packages>/...``, ``<model-cache>/...`` or a path relative to the working
    directory, for a path under one of them; any other path as it is."""
    roots = {
        "<site-packages>": Path(sysconfig.get_paths()["purelib"]),
        "<model-cache>": default_cache_dir(),
        "": Path.cwd(),
    }
    for name, root in roots.items():
        try:
            inside = Path(path).relative_to(root)
        except ValueError:
            continue
        return f"{name}/{inside}" if name else str(inside)
    return path
