"""GLUE registry, loaders and metrics: real shared files, malformed rows, known metric values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lrlora.app.tasks import (
    TASKS,
    DataError,
    compute_metrics,
    get_task,
    load_split,
    resolve_data_dir,
)
from lrlora.app.tasks.glue import parse_cola, parse_mrpc, parse_sst2, parse_stsb
from lrlora.app.tasks.metrics import METRICS

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def shared_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared data directory, found by the default relative lookup from the repo root."""
    monkeypatch.delenv("LRLORA_DATA", raising=False)
    monkeypatch.chdir(REPO_ROOT)
    try:
        return resolve_data_dir()
    except DataError as err:
        pytest.skip(f"shared benchmark data not available: {err}")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


# --- real shared files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "split", "rows"),
    [
        ("sst2", "train", 67_349),
        ("sst2", "dev", 872),
        ("mrpc", "train", 3_668),
        ("mrpc", "dev", 408),
        ("stsb", "train", 5_749),
        ("stsb", "dev", 1_500),
        ("stsb", "test", 1_379),
        ("rte", "train", 2_490),
        ("rte", "dev", 277),
        ("qnli", "dev", 5_463),
    ],
)
def test_real_split_row_counts(shared_data: Path, task: str, split: str, rows: int) -> None:
    examples = load_split(task, split)
    assert len(examples) == rows
    if get_task(task).is_regression:
        assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in examples)
    else:
        assert {e.label for e in examples} == {0, 1}
        assert all(type(e.label) is int for e in examples)


def test_real_files_keep_quotes_and_map_labels(shared_data: Path) -> None:
    mrpc = load_split("mrpc", "dev", limit=1)[0]
    assert mrpc.text_b is not None and mrpc.text_b.startswith('"The foodservice')
    assert load_split("sst2", "dev", limit=1)[0].text_a == (
        "it 's a charming and often affecting journey ."
    )
    assert load_split("qnli", "dev", limit=2)[1].label == 1  # not_entailment
    assert load_split("rte", "dev", limit=2)[1].label == 0  # entailment
    assert load_split("stsb", "test", limit=1)[0].label == 2.5


def test_unavailable_split_and_missing_cola(shared_data: Path) -> None:
    with pytest.raises(ValueError, match="not available offline"):
        load_split("qnli", "train")
    with pytest.raises(DataError, match=r"glue/cola/train\.tsv.*not found") as info:
        load_split("cola", "train")
    assert info.value.path == shared_data / "glue/cola/train.tsv"


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known tasks:.*sst2"):
        get_task("mnli")


def test_registry_metrics_exist() -> None:
    for task in TASKS.values():
        assert set(task.metrics) <= set(METRICS)
        assert task.main_metric in task.metrics
    assert get_task("stsb").is_regression and not get_task("sst2").is_regression


# --- data directory resolution ------------------------------------------------------


def test_env_var_beats_defaults_and_argument_beats_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env, from_arg = tmp_path / "env", tmp_path / "arg"
    from_env.mkdir()
    from_arg.mkdir()
    monkeypatch.setenv("LRLORA_DATA", str(from_env))
    assert resolve_data_dir() == from_env.resolve()
    assert resolve_data_dir(from_arg) == from_arg.resolve()
    write(from_env / "glue/sst2/dev.tsv", "label\ttext_a\n1\tgood\n")
    assert load_split("sst2", "dev") == load_split("sst2", "dev", data_dir=from_env)


def test_explicit_missing_directory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRLORA_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="LRLORA_DATA"):
        resolve_data_dir()
    with pytest.raises(DataError, match="data_dir argument"):
        resolve_data_dir(tmp_path / "missing")


def test_cwd_relative_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRLORA_DATA", raising=False)
    (tmp_path / "shared/data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_data_dir() == (tmp_path / "shared/data").resolve()


# --- malformed and empty files ------------------------------------------------------


def test_missing_and_empty_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"sst2/train\.tsv: file for sst2 train not found"):
        load_split("sst2", "train", data_dir=tmp_path)
    write(tmp_path / "glue/sst2/train.tsv", "label\ttext_a\n\n")
    with pytest.raises(DataError, match="no examples"):
        load_split("sst2", "train", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("parser", "text", "line", "problem"),
    [
        (parse_sst2, "label\ttext_a\n1\tgood\n0\tbad\textra\n", 3, "3 tab-separated columns"),
        (parse_sst2, "label\ttext_a\n1\tgood\npositive\tbad\n", 3, "label 'positive'"),
        (parse_sst2, "label\ttext_a\n2\tgood\n", 2, "label '2'"),
        (parse_sst2, "sentence\tlabel\ngood\t1\n", 1, "header is"),
        (parse_sst2, "label\ttext_a\n1\t  \n", 2, "empty sentence"),
        (parse_stsb, "g\tf\t2012\t1\t5.000\ta\tb\ng\tf\t2012\t2\thigh\ta\tb\n", 2, "not a number"),
        (parse_stsb, "g\tf\t2012\t1\t5.5\ta\tb\n", 1, "outside"),
        (parse_stsb, "g\tf\t2012\t1\tnan\ta\tb\n", 1, "outside"),
        (parse_stsb, "g\tf\t2012\t1\t4.0\ta\n", 1, "6 tab-separated columns"),
        (parse_mrpc, "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\n", 2, "4 tab"),
    ],
)
def test_bad_row_names_file_line_and_format(
    tmp_path: Path, parser, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path / "split.tsv", text)
    with pytest.raises(DataError, match=problem) as info:
        parser(path)
    err = info.value
    assert (err.path, err.line) == (path, line)
    assert str(err).startswith(f"{path}:{line}: ")
    assert "; expected " in str(err)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "split.tsv"
    path.write_bytes(b"label\ttext_a\n1\tgood\n0\tna\xefve \xff\n")
    with pytest.raises(DataError, match=r"split\.tsv:3: is not utf-8 text \(byte 0xef") as info:
        parse_sst2(path)
    assert info.value.line == 3 and "; expected header" in str(info.value)


def test_a_bad_value_is_quoted_as_a_short_excerpt(tmp_path: Path) -> None:
    """A megabyte-long field is quoted by its first characters only."""
    path = write(tmp_path / "split.tsv", "label\ttext_a\n" + "x" * 1_000_000 + "\tgood\n")
    with pytest.raises(DataError, match=r"split\.tsv:2: label 'xxx") as info:
        parse_sst2(path)
    assert "x" * 100 not in str(info.value) and "xxx..." in str(info.value)


def test_stsb_ignores_extra_trailing_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "g\tf\t2012\t1\t3.8\ta\tb\tsource a\tsource b\n")
    assert parse_stsb(path)[0].label == 3.8


def test_mrpc_bom_header_and_quotes(tmp_path: Path) -> None:
    text = 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\t"a\tb"\n'
    path = write(tmp_path / "train.tsv", text, encoding="utf-8-sig")
    [example] = parse_mrpc(path)
    assert (example.text_a, example.text_b, example.label) == ('"a', 'b"', 1)


# --- CoLA in both layouts -----------------------------------------------------------


def test_cola_glue_release_layout(tmp_path: Path) -> None:
    write(
        tmp_path / "glue/cola/train.tsv", "gj04\t1\t\tThe book fell.\ngj04\t0\t*\tBook the fell.\n"
    )
    examples = load_split("cola", "train", data_dir=tmp_path)
    assert [(e.text_a, e.label) for e in examples] == [("The book fell.", 1), ("Book the fell.", 0)]


def test_cola_two_column_layout_with_and_without_header(tmp_path: Path) -> None:
    rows = "the book fell.\t1\nbook the fell.\t0\n"
    write(tmp_path / "glue/cola/dev.tsv", rows)
    write(tmp_path / "glue/cola/train.tsv", "sentence\tlabel\n" + rows)
    for split in ("dev", "train"):
        examples = load_split("cola", split, data_dir=tmp_path)
        assert [(e.text_a, e.label) for e in examples] == [
            ("the book fell.", 1),
            ("book the fell.", 0),
        ]


def test_cola_bad_layout(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.tsv", "a\tb\tc\n")
    with pytest.raises(DataError, match=r"dev\.tsv:1: 3 tab-separated columns; expected either"):
        parse_cola(path)
    path = write(tmp_path / "mixed.tsv", "gj04\t1\t\tThe book fell.\nthe book fell.\t1\n")
    with pytest.raises(DataError, match=r"mixed\.tsv:2: 2 tab-separated columns"):
        parse_cola(path)


# --- metrics ------------------------------------------------------------------------

# Confusion matrix of PRED vs GOLD: TP = 2, FN = 1, FP = 0, TN = 1.
GOLD, PRED = [1, 1, 1, 0], [1, 1, 0, 0]


def test_classification_metrics_known_values() -> None:
    pytest.importorskip("sklearn")
    # accuracy 3/4; precision 1, recall 2/3 -> F1 = 0.8
    assert compute_metrics("mrpc", PRED, GOLD) == pytest.approx(
        {"accuracy": 75.0, "f1": 80.0, "score": 77.5}
    )
    # MCC = (2*1 - 0*1) / sqrt(2 * 3 * 1 * 2) = 1 / sqrt(3)
    expected = 100 / math.sqrt(3)
    assert compute_metrics("cola", PRED, GOLD) == pytest.approx(
        {"mcc": expected, "score": expected}
    )
    assert compute_metrics("sst2", PRED, GOLD) == pytest.approx({"accuracy": 75.0, "score": 75.0})
    assert compute_metrics("cola", [1, 1, 1, 1], GOLD)["mcc"] == 0.0


def test_regression_metrics_known_values() -> None:
    pytest.importorskip("scipy")
    assert compute_metrics("stsb", [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(
        {"pearson": 100.0, "spearmanr": 100.0, "score": 100.0}
    )
    # centred x = (-1, 0, 1), y = (-1, 1, 0): cov 1, variances 2 -> r = 1/2; ranks equal values
    assert compute_metrics("stsb", [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["pearson"] == pytest.approx(50)
    monotone = compute_metrics("stsb", [0.0, 1.0, 4.0, 9.0], [0.0, 1.0, 2.0, 3.0])
    assert monotone["spearmanr"] == pytest.approx(100.0) and monotone["pearson"] < 100.0
    constant = compute_metrics("stsb", [2.5, 2.5, 2.5], [1.0, 2.0, 3.0])
    assert constant == {"pearson": 0.0, "spearmanr": 0.0, "score": 0.0}


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics("sst2", [1, 0], [1])
    with pytest.raises(ValueError, match="class ids"):
        compute_metrics("sst2", [0.7, 0.2], [1, 0])
    with pytest.raises(ValueError, match="argmax"):
        compute_metrics("sst2", [[0.1, 0.9]], [1])
