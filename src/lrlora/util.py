"""Small helpers every floor shares: dataclass fields that carry their help text, the
versions of the packages a result depends on, atomic writes (write beside, then rename), and
reading a file lrlora wrote or was given, with :class:`BadFileError` naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

PACKAGES = ("lrlora", "torch", "transformers", "peft")
"""The packages whose versions a run or result records."""
EXCERPT_CHARS = 80
"""The most characters of a bad value an error message quotes."""


class BadFileError(ValueError):
    """A file is missing, unreadable, or does not hold what it should.

    The message reads ``<path>[:<line>]: <problem>[; <todo>]``: the file, what is wrong with
    it and what to do. ``path``, ``line``, ``problem`` and ``todo`` are kept as attributes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        problem: str,
        *,
        line: int | None = None,
        todo: str | None = None,
    ) -> None:
        self.path, self.line, self.problem, self.todo = Path(path), line, problem, todo
        where = str(self.path) if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}" + (f"; {todo}" if todo else ""))


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with "..." when longer: what an error
    message quotes of a bad value (a line of a data file may be megabytes long)."""
    return shorten(repr(value), limit)


def shorten(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters with "..." when longer."""
    return text if len(text) <= limit else text[:limit] + "..."


# -- dataclass fields -----------------------------------------------------------------------
def field_help(
    text: str,
    default: Any = None,
    *,
    default_factory: Callable[[], Any] | None = None,
    **metadata: Any,
) -> Any:
    """A dataclass field whose help text (``metadata["help"]``) and any other metadata (e.g.
    ``choices``) live with it; the CLI flags are generated from them."""
    meta = {"help": text, **metadata}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# -- provenance -----------------------------------------------------------------------------
def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Python's version and each installed package's (None where it is not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


# -- reading ---------------------------------------------------------------------------------
def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of ``path``; :class:`BadFileError` naming the file, and the line of the first
    byte that is not ``encoding``, if it cannot be read or decoded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadFileError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise BadFileError(
            path,
            f"is not {encoding} text (byte {data[err.start]:#04x} at column {column})",
            line=line,
            todo=f"save it as {encoding}",
        ) from None


def read_json(path: str | os.PathLike, todo: str | None = None) -> Any:
    """The JSON value in ``path``; :class:`BadFileError` naming the file (and the line of a
    syntax error), with ``todo`` as what to do, if it is missing, unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise BadFileError(path, "is missing", todo=todo)
    try:
        text = read_text(path)
    except BadFileError as err:
        raise BadFileError(path, err.problem, line=err.line, todo=todo) from None
    if not text.strip():
        raise BadFileError(path, "is empty", todo=todo)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        problem = f"is not valid JSON ({err.msg})"
        raise BadFileError(path, problem, line=err.lineno, todo=todo) from None
    except (ValueError, RecursionError) as err:  # an integer too long, nesting too deep
        problem = f"is not valid JSON ({shorten(str(err))})"
        raise BadFileError(path, problem, todo=todo) from None


_KINDS = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
          None: "null", dict: "an object", list: "a list"}  # fmt: skip


def _kind(shape: Any) -> str:
    if isinstance(shape, tuple):
        return " or ".join(_kind(s) for s in shape)
    if isinstance(shape, (list, dict)):
        return _KINDS[type(shape)]
    return _KINDS.get(shape) or shape.__name__


def _fits(value: Any, shape: Any) -> bool:
    """Whether ``value`` is of the kind ``shape`` names (not its contents)."""
    if isinstance(shape, tuple):
        return any(_fits(value, s) for s in shape)
    if shape is None:
        return value is None
    if shape is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if shape is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if isinstance(shape, (list, dict)):
        return isinstance(value, type(shape))
    return isinstance(value, shape)


def _mismatch(value: Any, shape: Any, where: str) -> str | None:
    """Where ``value`` first departs from ``shape``, or None (see :func:`check_shape`)."""
    options = shape if isinstance(shape, tuple) else (shape,)
    fitting = [s for s in options if _fits(value, s)]
    if not fitting:
        return f"{where or 'the top level'} is {excerpt(value, 40)}, not {_kind(shape)}"
    inner = fitting[0]
    if isinstance(inner, list) and inner:
        found = (_mismatch(item, inner[0], f"{where}[{i}]") for i, item in enumerate(value))
        return next((m for m in found if m), None)
    if isinstance(inner, dict):
        if str in inner:  # any keys, every value of one shape
            items = [(k, inner[str]) for k in value]
        else:
            missing = [k for k in inner if not k.endswith("?") and k not in value]
            if missing:
                return f"{where or 'the top level'} has no {missing[0]!r}"
            items = [(k.removesuffix("?"), s) for k, s in inner.items()]
            items = [(k, s) for k, s in items if k in value]
        found = (_mismatch(value[k], s, f"{where}[{k!r}]") for k, s in items)
        return next((m for m in found if m), None)
    return None


def check_shape(path: str | os.PathLike, value: Any, shape: Any, todo: str | None = None) -> None:
    """Raise :class:`BadFileError` naming ``path`` and the first place where ``value`` (read
    from it) departs from ``shape``. A shape is a type (``int``; ``float`` takes any finite
    number; ``dict`` and ``list`` any object or list), None, a tuple of shapes (any of them), a
    list ``[item shape]`` or a dict ``{key: shape}`` of required keys (``"key?"``: checked
    where present; other keys may be present); ``{str: shape}`` takes any keys with values
    of that shape."""
    found = shape_mismatch(value, shape)
    if found:
        raise BadFileError(path, found, todo=todo)


def shape_mismatch(value: Any, shape: Any) -> str | None:
    """Where ``value`` first departs from ``shape`` (see :func:`check_shape`), or None."""
    return _mismatch(value, shape, "")


# -- atomic writes --------------------------------------------------------------------------
@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; when the block ends without error it is synced
    and renamed onto ``path`` (readers see the old file or the new one, never a part), else
    removed. The file is readable by everyone, like an ordinary one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON (indented, keys sorted) atomically: a crash leaves the old file."""
    with atomic_file(path) as f:
        json.dump(data, f, indent=2, sort_keys=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def staging_dir(final: str | os.PathLike) -> Path:
    """A fresh private directory beside ``final`` to write into before :func:`publish_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place; an existing one is replaced only after
    the new one is complete."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
