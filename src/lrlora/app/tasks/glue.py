"""The GLUE tasks available offline: their files, formats, label sets and metrics.

Every file is tab-separated and read without csv quoting (MRPC sentences contain
unbalanced ``"`` characters). Fields are stripped of surrounding whitespace and blank
lines are skipped. A malformed row raises :class:`DataError` with the file, the 1-based
line number and the expected format. Layouts (columns in order):

- sst2: header ``label, text_a``; label 0/1.
- mrpc: header ``Quality, #1 ID, #2 ID, #1 String, #2 String`` after a UTF-8 BOM; 0/1.
- rte: header ``sentence1, sentence2, label, idx``; label 0 = entailment, 1 = not.
- qnli: header ``index, question, sentence, label``; entailment -> 0, not_entailment -> 1.
- stsb: no header; ``genre, file, year, id, score, sentence1, sentence2`` and sometimes
  extra trailing fields (ignored); score in [0, 5].
- cola: GLUE release ``source, label, original mark, sentence`` without header, or the
  lowercased ``sentence, label`` variant with an optional header; label 0/1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ...util import BadFileError, excerpt, read_text
from .data import DataError, resolve_data_dir


@dataclass(frozen=True, slots=True)
class Example:
    """One input: a sentence or sentence pair and its label.

    ``label`` is an ``int`` class id for classification and a ``float`` score for
    regression (STS-B).
    """

    text_a: str
    text_b: str | None
    label: float


@dataclass(frozen=True)
class GlueTask:
    """A GLUE task: where its splits are and how to read and score them."""

    name: str
    num_labels: int
    """Number of classes; 1 means regression."""
    metrics: tuple[str, ...]
    """Metric names reported by :func:`lrlora.tasks.metrics.compute_metrics`."""
    main_metric: str
    """The metric used to pick the best checkpoint."""
    max_length: int
    """Maximum sequence length in tokens (AdaLoRA's DeBERTaV3 GLUE settings)."""
    splits: dict[str, str]
    """Split name -> file path relative to the data directory."""
    parser: Callable[[Path], list[Example]]
    """Reads one split file into examples."""

    def __post_init__(self) -> None:
        if self.main_metric not in self.metrics:
            raise ValueError(
                f"task {self.name}: main_metric {self.main_metric!r} must be one of {self.metrics}"
            )

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


_BINARY = {"0": 0, "1": 1}
# RTE and QNLI: 0 = entailment, 1 = not entailment, written either as ids or as names.
_ENTAILMENT = {"0": 0, "1": 1, "entailment": 0, "not_entailment": 1}


@dataclass(frozen=True)
class _TsvFile:
    """One tab-separated file and the format it must follow, quoted in every error."""

    path: Path
    expected: str
    encoding: str = "utf-8"

    def error(self, line: int | None, problem: str) -> DataError:
        return DataError(self.path, problem, line=line, expected=self.expected)

    def lines(self) -> list[tuple[int, list[str]]]:
        """(1-based line number, fields) of every non-blank line."""
        try:
            text = read_text(self.path, self.encoding)
        except BadFileError as err:
            raise self.error(err.line, err.problem) from None
        return [
            (number, line.rstrip("\r").split("\t"))
            for number, line in enumerate(text.split("\n"), start=1)
            if line.strip()
        ]

    def rows(
        self,
        ncols: int,
        header: tuple[str, ...] | None = None,
        *,
        header_optional: bool = False,
        extra_ok: bool = False,
    ) -> list[tuple[int, list[str]]]:
        """Data rows with ``ncols`` columns (at least ``ncols`` if ``extra_ok``), header removed."""
        rows = self.lines()
        if header is not None and rows:
            found = tuple(field.strip() for field in rows[0][1])
            if found == header:
                rows = rows[1:]
            elif not header_optional:
                raise self.error(rows[0][0], f"header is {excerpt(found)}, not {header}")
        for number, fields in rows:
            if len(fields) != ncols and not (extra_ok and len(fields) > ncols):
                raise self.error(number, f"{len(fields)} tab-separated columns instead of {ncols}")
        return rows

    def text(self, line: int, value: str) -> str:
        value = value.strip()
        if not value:
            raise self.error(line, "empty sentence")
        return value

    def label(self, line: int, value: str, labels: Mapping[str, int]) -> int:
        try:
            return labels[value.strip()]
        except KeyError:
            problem = f"label {excerpt(value)} is not one of {sorted(labels)}"
            raise self.error(line, problem) from None

    def score(self, line: int, value: str, low: float, high: float) -> float:
        try:
            score = float(value)
        except ValueError:
            raise self.error(line, f"score {excerpt(value)} is not a number") from None
        if not low <= score <= high:  # also rejects nan
            raise self.error(line, f"score {score} is outside [{low}, {high}]")
        return score


def parse_sst2(path: Path) -> list[Example]:
    """SST-2 as copied here: header ``label<TAB>text_a``, then ``label<TAB>sentence``."""
    f = _TsvFile(path, "header 'label<TAB>text_a', then rows 'label<TAB>sentence', label 0 or 1")
    return [
        Example(f.text(n, row[1]), None, f.label(n, row[0], _BINARY))
        for n, row in f.rows(2, ("label", "text_a"))
    ]


def parse_mrpc(path: Path) -> list[Example]:
    """MRPC (GLUE TSV, BOM header): quality label, two ids, two sentences."""
    header = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
    expected = f"header {'<TAB>'.join(header)!r}, then 5 columns with Quality 0 or 1"
    f = _TsvFile(path, expected, encoding="utf-8-sig")
    return [
        Example(f.text(n, row[3]), f.text(n, row[4]), f.label(n, row[0], _BINARY))
        for n, row in f.rows(5, header)
    ]


def parse_rte(path: Path) -> list[Example]:
    """RTE: header ``sentence1 sentence2 label idx``; label 0 = entailment, 1 = not."""
    expected = (
        "header 'sentence1<TAB>sentence2<TAB>label<TAB>idx', then 4 columns with label "
        "0/entailment or 1/not_entailment"
    )
    f = _TsvFile(path, expected)
    return [
        Example(f.text(n, row[0]), f.text(n, row[1]), f.label(n, row[2], _ENTAILMENT))
        for n, row in f.rows(4, ("sentence1", "sentence2", "label", "idx"))
    ]


def parse_qnli(path: Path) -> list[Example]:
    """QNLI: header ``index question sentence label``; entailment -> 0, not_entailment -> 1."""
    expected = (
        "header 'index<TAB>question<TAB>sentence<TAB>label', then 4 columns with label "
        "entailment or not_entailment"
    )
    f = _TsvFile(path, expected)
    return [
        Example(f.text(n, row[1]), f.text(n, row[2]), f.label(n, row[3], _ENTAILMENT))
        for n, row in f.rows(4, ("index", "question", "sentence", "label"))
    ]


def parse_stsb(path: Path) -> list[Example]:
    """STS-B (original layout, no header): score in column 5, sentences in 6 and 7.

    Fields after the seventh (the sentences' sources, on some lines) are ignored.
    """
    expected = (
        "no header; 7 or more columns 'genre<TAB>file<TAB>year<TAB>id<TAB>score<TAB>"
        "sentence1<TAB>sentence2[<TAB>...]' with score in [0, 5]"
    )
    f = _TsvFile(path, expected)
    return [
        Example(f.text(n, row[5]), f.text(n, row[6]), f.score(n, row[4], 0.0, 5.0))
        for n, row in f.rows(7, extra_ok=True)
    ]


_COLA_GLUE = "no header; 4 columns 'source<TAB>label<TAB>original mark<TAB>sentence'"
_COLA_PLAIN = "2 columns 'sentence<TAB>label' with an optional header 'sentence<TAB>label'"


def parse_cola(path: Path) -> list[Example]:
    """CoLA in either layout, told apart by the column count of the file's first line.

    GLUE release: ``source, label, original mark, sentence`` without header (4 columns);
    lowercased variant: ``sentence, label`` with optional header (2 columns). Label 0 or 1.
    """
    lines = _TsvFile(path, _COLA_GLUE).lines()
    ncols = len(lines[0][1]) if lines else 4
    if ncols == 4:
        f = _TsvFile(path, f"{_COLA_GLUE}, label 0 or 1")
        rows = f.rows(4)
        return [Example(f.text(n, row[3]), None, f.label(n, row[1], _BINARY)) for n, row in rows]
    if ncols == 2:
        f = _TsvFile(path, f"{_COLA_PLAIN}, label 0 or 1")
        rows = f.rows(2, ("sentence", "label"), header_optional=True)
        return [Example(f.text(n, row[0]), None, f.label(n, row[1], _BINARY)) for n, row in rows]
    raise DataError(
        path,
        f"{ncols} tab-separated columns",
        line=lines[0][0],
        expected=f"either {_COLA_GLUE} or {_COLA_PLAIN}",
    )


def _glue(name: str, train: str, dev: str, test: str | None = None) -> dict[str, str]:
    splits = {"train": f"glue/{name}/{train}", "dev": f"glue/{name}/{dev}"}
    if test is not None:
        splits["test"] = f"glue/{name}/{test}"
    return splits


TASKS: dict[str, GlueTask] = {
    "sst2": GlueTask(
        name="sst2",
        num_labels=2,
        metrics=("accuracy",),
        main_metric="accuracy",
        max_length=64,
        splits=_glue("sst2", "train.tsv", "dev.tsv"),
        parser=parse_sst2,
    ),
    "mrpc": GlueTask(
        name="mrpc",
        num_labels=2,
        metrics=("accuracy", "f1"),
        main_metric="f1",
        max_length=320,
        splits=_glue("mrpc", "train.tsv", "dev.tsv"),
        parser=parse_mrpc,
    ),
    "rte": GlueTask(
        name="rte",
        num_labels=2,
        metrics=("accuracy",),
        main_metric="accuracy",
        max_length=320,
        splits=_glue("rte", "train.tsv", "dev.tsv"),
        parser=parse_rte,
    ),
    "qnli": GlueTask(
        name="qnli",
        num_labels=2,
        metrics=("accuracy",),
        main_metric="accuracy",
        max_length=512,
        splits={"dev": "glue/qnli/dev.tsv"},  # no training split offline
        parser=parse_qnli,
    ),
    "stsb": GlueTask(
        name="stsb",
        num_labels=1,
        metrics=("pearson", "spearmanr"),
        main_metric="pearson",
        max_length=128,
        # The original STS-benchmark test file carries gold scores, so it is usable.
        splits=_glue("stsb", "train.csv", "dev.csv", test="test.csv"),
        parser=parse_stsb,
    ),
    "cola": GlueTask(
        name="cola",
        num_labels=2,
        metrics=("mcc",),
        main_metric="mcc",
        max_length=64,
        # No shared copy: point --data-dir / LRLORA_DATA at a directory holding glue/cola/.
        splits=_glue("cola", "train.tsv", "dev.tsv"),
        parser=parse_cola,
    ),
}


def get_task(name: str) -> GlueTask:
    """The registered task called ``name``; ValueError listing the known names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown GLUE task {name!r}; known tasks: {sorted(TASKS)}") from None


def load_split(
    task: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[Example]:
    """The examples of one split, in file order, the first ``limit`` only if given.

    ``data_dir`` is resolved by :func:`resolve_data_dir`. The whole file is validated
    even when ``limit`` is set. Raises ValueError for an unknown task or a split that is
    not available offline, and :class:`DataError` for a missing, malformed or empty file.
    """
    spec = get_task(task)
    if split not in spec.splits:
        raise ValueError(
            f"split {split!r} of task {task!r} is not available offline; "
            f"available splits: {sorted(spec.splits)}"
        )
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples or None, got {limit}")
    path = resolve_data_dir(data_dir) / spec.splits[split]
    if not path.is_file():
        raise DataError(path, f"file for {task} {split} not found; is the data directory right?")
    examples = spec.parser(path)
    if not examples:
        raise DataError(path, f"{task} {split} has no examples")
    return examples[:limit]
