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

import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from ..util import BadFileError, check_shape, publish_dir, read_json, write_json_atomic
from .models import default_cache_dir
from .plots import rank_heatmap, rank_trajectories

FIGURES = {"heatmap": "figures/rank_heatmap.png", "trajectory": "figures/rank_trajectory.png"}
_ROW = {"name": str, "kind": str, "role": str, "depth": (int, None), "r_max": int,
        "rho": float, "hard_rank": int, "params": int}  # fmt: skip
_POINT = {"step": int, "rho": {str: float}, "hard_rank?": {str: int}, "tau?": (float, None),
          **{f"{k}?": (float, None) for k in
             ("allowance", "soft_params", "adapter_params", "budget_params")}}  # fmt: skip
SHAPES = {
    "config.json": {"args": {"task": str, "method": str, "budget_rank": int, "seed": int}},
    "metrics.json": {
        "metrics": {str: float},
        **dict.fromkeys(("eval_split", "task", "method"), str),
        **dict.fromkeys(("eval_rows", "train_rows", "steps", "adapter_params"), int),
        **dict.fromkeys(("head_params", "budget_params"), int),
        **dict.fromkeys(("train_time_s", "steps_per_second", "train_loss", "wall_time_s"), float),
    },
    "ranks.json": {"layers": [_ROW], "trajectory": [_POINT]},
    "history.json": [dict],
}
"""The JSON files of a run directory and what :func:`report` reads of each."""
JSON_FILES = tuple(SHAPES)


class RunExistsError(FileExistsError):
    """The run directory is in the way: it holds a run and ``overwrite`` is off, or it holds
    something that is not a run (which ``overwrite`` never replaces)."""


def is_run(path: Path) -> bool:
    """Whether ``path`` looks like a run directory ``lrlora train`` wrote."""
    return all((path / name).is_file() for name in ("config.json", "metrics.json"))


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty directory unless ``overwrite``; even then, refuse one
    that is not a run directory (its files are not lrlora's to delete), the working
    directory or a directory above it."""
    here = Path.cwd().resolve()
    if path.resolve() in (here, *here.parents):
        raise RunExistsError(
            f"--output-dir {path} is the working directory or holds it: a run directory is "
            "replaced as a whole, so choose a directory of its own, e.g. runs/<name>."
        )
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not is_run(path):
        names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        found = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        what = f"holds files that are not an lrlora run ({found})" if names else "is a file"
        raise RunExistsError(
            f"{path} {what}; --overwrite replaces only a run directory lrlora wrote: move "
            "it away or choose another --output-dir."
        )
    if not overwrite:
        raise RunExistsError(
            f"{path} already holds a finished run; pass --overwrite to replace it or choose "
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
    """The JSON files of a finished run, by name, each checked against :data:`SHAPES`."""
    missing = [name for name in JSON_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} is not a finished lrlora run directory: {', '.join(missing)} missing."
        )
    todo = "it was not written by lrlora train, or was edited: train the run again"
    run = {name: read_json(run_dir / name, todo) for name in JSON_FILES}
    for name, shape in SHAPES.items():
        check_shape(run_dir / name, run[name], shape, todo)
    ranks, metrics = run["ranks.json"], run["metrics.json"]
    if not ranks["layers"] or not ranks["trajectory"]:
        raise BadFileError(run_dir / "ranks.json", "holds no layer or no trajectory", todo=todo)
    if metrics["budget_params"] <= 0:
        raise BadFileError(run_dir / "metrics.json", "budget_params is not positive", todo=todo)
    return run


def report(run_dir: str | Path) -> str:
    """Regenerate a run's figures and return its summary. The figures are written only
    inside ``run_dir``: a ``figures`` that is a symbolic link or not a directory is refused."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    figures = run_dir / "figures"
    if figures.is_symlink() or (figures.exists() and not figures.is_dir()):
        where = f"a symbolic link to {figures.readlink()}" if figures.is_symlink() else "a file"
        raise BadFileError(
            figures,
            f"is {where}; lrlora report writes only inside the run directory",
            todo="replace it with a plain directory (or remove it) and report again",
        )
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
    """``<site-packages>/...``, ``<model-cache>/...``, a path relative to the working
    directory, ``<tmp>/...`` or ``<home>/...``, for a path under one of them (the first that
    holds it); any other path as it is. Records made with it name no machine's directories."""
    roots = {
        "<site-packages>": Path(sysconfig.get_paths()["purelib"]),
        "<model-cache>": default_cache_dir(),
        "": Path.cwd(),
        "<tmp>": Path(tempfile.gettempdir()),
        "<home>": Path.home(),
    }
    for name, root in roots.items():
        try:
            inside = Path(path).relative_to(root)
        except ValueError:
            continue
        return f"{name}/{inside}" if name else str(inside)
    return path
