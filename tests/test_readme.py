"""The README stays short and true: its two fresh-machine commands are the ones CI runs,
its plain-loop example runs, and the averages it quotes are the generated report's; the
tests docs/RELIABILITY.md names exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_names_the_two_commands():
    assert len(README.splitlines()) <= 150
    assert "bash scripts/setup.sh && .venv/bin/lrlora train" in README
    assert 'bash scripts/setup.sh && .venv/bin/python -m pytest -q -m "not slow"' in README
    assert (
        'bash scripts/setup.sh && .venv/bin/python -m pytest -q -m "not slow"'
        in (ROOT / ".ci" / "run").read_text()
    )


def test_plain_loop_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    block = re.search(r"## API in a plain PyTorch loop\n\n```python\n(.*?)```", README, re.S)
    monkeypatch.chdir(tmp_path)  # it exports to ./my-adapter
    exec(compile(block.group(1), "README.md", "exec"), {})
    assert (tmp_path / "my-adapter" / "adapter_config.json").is_file()


def test_quoted_averages_are_the_generated_ones():
    table = re.search(r"\| LoRA \| LR-LoRA \| AdaLoRA \| DoRA \|\n\|.*\|\n\| (.*) \|", README)
    quoted = [float(v) for v in table.group(1).split(" | ")]
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    generated: dict[str, float] = {}  # the first table, the score table, has the averages
    for m in re.finditer(r"^\| (lora|lr-lora|adalora|dora) \|.*\| ([\d.]+) \|$", results, re.M):
        generated.setdefault(m.group(1), float(m.group(2)))
    assert quoted == [generated[m] for m in ("lora", "lr-lora", "adalora", "dora")]


def test_reliability_names_only_tests_that_exist():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    named = re.findall(r"`([\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?`", text)
    assert len(named) > 40
    for file, test, case in named:
        source = (ROOT / "tests" / file).read_text()
        assert f"def {test}(" in source, f"{file}::{test}"
        assert not case or f'"{case}"' in source, f"{file}::{test}[{case}]"
