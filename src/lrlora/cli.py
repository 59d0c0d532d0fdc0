"""``lrlora``: subcommands mapped to library functions.

- ``train``: :func:`lrlora.train.train`; its flags are generated from
  :class:`lrlora.train.TrainArgs` (name, type, default and help of every field).
- ``report``: :func:`lrlora.runs.report` on a run directory.
- ``demo``: :func:`lrlora.demo.run`, the teacher/student problem with known ranks.
- ``bench``: :func:`lrlora.bench.quality.run_bench`, the quality matrix; its flags are
  generated from :class:`lrlora.bench.quality.BenchArgs`.
- ``bench-speed``: :func:`lrlora.bench.speed_md.run_speed_bench`, step time and memory
  against the baselines; its flags are generated from :class:`lrlora.bench.speed.SpeedArgs`.

A subcommand is an entry of :data:`SUBCOMMANDS`: ``name -> Subcommand(help,
add_arguments, run)``; ``run`` returns the exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

EXIT_USAGE = 2


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- flags from a dataclass ---------------------------------------------------------------------
def _flag_type(annotation: Any) -> tuple[Any, str | None, tuple | None]:
    """(element type, nargs, choices) of a field annotation: ``X | None`` is X, ``list[X]``
    takes one or more values, ``Literal[...]`` gives choices."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if typing.get_origin(annotation) is list:
        return args[0], "+", None
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0]), None, tuple(args)
    return annotation, None, None


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag-name`` per field of ``cls``, help from ``metadata["help"]``. Defaults
    are left to the dataclass (unset flags are absent from the namespace)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, nargs, choices = _flag_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f.metadata["help"].replace("%", "%%")
        if default is not None and kind is not bool:
            text += f" (default: {default})"
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(flag, action=action, default=argparse.SUPPRESS, help=text)
            continue
        choices = f.metadata.get("choices", choices)
        metavar = None if choices else f.name.upper()
        parser.add_argument(flag, type=kind, nargs=nargs, choices=choices, metavar=metavar,
                            default=argparse.SUPPRESS, help=text)  # fmt: skip


def dataclass_from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})


def _error(message: str) -> int:
    """Print ``message`` as one line (a library's message may span several) and return the
    usage exit status."""
    print(f"lrlora: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


# -- subcommands --------------------------------------------------------------------------------
def _add_train(parser: argparse.ArgumentParser) -> None:
    from .app.args import TrainArgs

    add_dataclass_arguments(parser, TrainArgs)


def _run_train(namespace: argparse.Namespace) -> int:
    from .app.train import USER_ERRORS, TrainArgs, train

    try:
        args = dataclass_from_namespace(TrainArgs, namespace)
    except ValueError as err:
        return _error(str(err))
    try:
        train(args)
    except USER_ERRORS as err:
        return _error(str(err))
    return 0


def _add_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="A run directory written by `lrlora train`.")


def _run_report(namespace: argparse.Namespace) -> int:
    from .app.runs import report
    from .util import BadFileError

    try:
        print(report(namespace.run_dir))
    except (FileNotFoundError, BadFileError) as err:
        return _error(str(err))
    return 0


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=600, help="Adam steps (default: 600).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")


def _run_demo(namespace: argparse.Namespace) -> int:
    from .app.demo import run

    run(steps=namespace.steps, seed=namespace.seed, show=True)
    return 0


def _add_bench(parser: argparse.ArgumentParser) -> None:
    from .bench.quality import BenchArgs

    add_dataclass_arguments(parser, BenchArgs)


def _run_bench(namespace: argparse.Namespace) -> int:
    from .bench.quality import BenchArgs, run_bench

    try:
        args = dataclass_from_namespace(BenchArgs, namespace)
    except ValueError as err:
        return _error(str(err))
    return run_bench(args)


def _add_bench_speed(parser: argparse.ArgumentParser) -> None:
    from .bench.speed import SpeedArgs

    add_dataclass_arguments(parser, SpeedArgs)


def _run_bench_speed(namespace: argparse.Namespace) -> int:
    from .bench.speed import SpeedArgs
    from .bench.speed_md import run_speed_bench
    from .util import BadFileError

    try:
        args = dataclass_from_namespace(SpeedArgs, namespace)
    except ValueError as err:
        return _error(str(err))
    try:
        record = run_speed_bench(args)
    except (FileNotFoundError, BadFileError) as err:  # --report-only: no record, or a bad one
        return _error(str(err))
    for target in record["targets"]:
        print(f"{'met' if target['met'] else 'MISSED'}: {target['target']}: {target['detail']}")
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand(
        "Fine-tune a model on a GLUE task with LR-LoRA or a baseline at one budget.",
        _add_train,
        _run_train,
    ),
    "report": Subcommand(
        "Reprint a run's summary and regenerate its figures.", _add_report, _run_report
    ),
    "demo": Subcommand(
        "Learn the ranks of a teacher/student problem whose true ranks are known.",
        _add_demo,
        _run_demo,
    ),
    "bench": Subcommand(
        "Run the quality matrix (tasks x methods x seeds, resumable) and write the report.",
        _add_bench,
        _run_bench,
    ),
    "bench-speed": Subcommand(
        "Time training steps and inference of LR-LoRA against LoRA, AdaLoRA and DoRA.",
        _add_bench_speed,
        _run_bench_speed,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrlora", description="Learnable-Rank LoRA: adapters whose rank is learned."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(child)
        child.set_defaults(_run=command.run)
    return parser


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds, so a run's temporary directory is removed


def main(argv: Sequence[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return namespace._run(namespace)
