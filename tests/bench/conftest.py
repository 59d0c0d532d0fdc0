"""Fixtures of the bench tests: a small matrix, registered as suite "test"."""

from __future__ import annotations

import pytest
from fakes import small_matrix

from lrlora.bench.suites import Matrix, Suite


@pytest.fixture
def matrix() -> Matrix:
    return small_matrix()


@pytest.fixture
def test_suite(monkeypatch, matrix):
    """Register the small matrix as suite "test" (full and quick)."""
    from lrlora.bench import suites

    monkeypatch.setitem(suites.SUITES, "test", Suite("test", matrix, matrix))
    return matrix
