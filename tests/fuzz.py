"""Strategies for fuzzing what lrlora reads (imported by the tests as ``fuzz``): random bytes,
a valid file cut short, and a valid JSON document with one place changed.

The examples are drawn deterministically (``derandomize``) and few, so a run takes seconds
and fails the same way twice; nothing is stored (no example database is written).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
"""Any JSON value Python's parser returns (NaN and infinities included)."""


def _places(document: Any, path: tuple = ()) -> list[tuple]:
    """Paths (keys and indices) to every value inside ``document``."""
    found = [path]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _places(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document[:8]):  # a long list: its head is enough
            found += _places(value, (*path, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one value replaced by any JSON value, or one key or item removed."""
    document = copy.deepcopy(document)
    path = draw(st.sampled_from(_places(document)))
    if not path:
        return draw(JSON)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        parent[path[-1]] = draw(JSON)
    else:
        del parent[path[-1]]
    return document


def contents(valid: bytes, document: Any = None) -> st.SearchStrategy[bytes]:
    """Bytes a file might hold instead of ``valid``: random bytes, ``valid`` cut short or with
    one byte changed, and (for a JSON ``document``) the document with one place changed."""
    cut = st.integers(0, max(len(valid) - 1, 0)).map(lambda n: valid[:n])
    flipped = st.tuples(st.integers(0, max(len(valid) - 1, 0)), st.integers(0, 255)).map(
        lambda change: valid[: change[0]] + bytes([change[1]]) + valid[change[0] + 1 :]
    )
    options = [st.binary(max_size=200), cut, flipped]
    if document is not None:
        options.append(mutated(document).map(lambda d: json.dumps(d).encode()))
    return st.one_of(options)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time: a loader that reads
    must leave it as it was."""
    found = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return found
