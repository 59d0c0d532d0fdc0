"""Where the offline benchmark data lives, and the error raised when it is missing or malformed.

The shared copies (see ``../shared/data/README.md``) are read in place, never copied into
the repository. :func:`resolve_data_dir` finds them; :class:`DataError` reports a missing
file or a malformed row with the file, the 1-based line number and the expected format.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...util import BadFileError

ENV_VAR = "LRLORA_DATA"
_RELATIVE_DEFAULT = Path("..") / "shared" / "data"


class DataError(BadFileError):
    """A data file or directory is missing, or a row does not follow its format.

    The message reads ``<path>:<line>: <problem>; expected <format>``, with the line and
    the format left out when they do not apply. ``path``, ``line`` and ``expected`` are
    kept as attributes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        problem: str,
        *,
        line: int | None = None,
        expected: str | None = None,
    ) -> None:
        self.expected = expected
        todo = None if expected is None else f"expected {expected}"
        super().__init__(path, problem, line=line, todo=todo)


def _repo_root() -> Path | None:
    """The nearest directory above this file that holds ``pyproject.toml`` (None if installed)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The benchmark data directory, chosen in this order.

    1. ``data_dir``, when given;
    2. the environment variable ``LRLORA_DATA``, when set and non-empty;
    3. ``../shared/data`` relative to the current working directory;
    4. ``../shared/data`` relative to the repository root (the directory holding
       ``pyproject.toml`` above this file).

    An explicit choice (1 or 2) must exist: falling back to another directory would
    silently train or evaluate on data other than the one asked for. The two defaults
    are tried in turn. Raises :class:`DataError` naming every place tried.
    """
    explicit = [(data_dir, "the data_dir argument (--data-dir)")]
    explicit.append((os.environ.get(ENV_VAR) or None, f"the {ENV_VAR} environment variable"))
    for value, source in explicit:
        if value is None:
            continue
        path = Path(value).expanduser()
        if not path.is_dir():
            raise DataError(path, f"data directory given by {source} does not exist")
        return path.resolve()

    candidates = [Path.cwd() / _RELATIVE_DEFAULT]
    root = _repo_root()
    if root is not None:
        candidates.append(root / _RELATIVE_DEFAULT)
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    tried = ", ".join(str(p.resolve()) for p in candidates)
    raise DataError(
        _RELATIVE_DEFAULT,
        f"no benchmark data directory found (tried {tried}); pass --data-dir DIR "
        f"or set {ENV_VAR}=DIR to the directory holding glue/",
    )
