"""Small helpers every floor shares: dataclass fields that carry their help text, the
versions of the packages a result depends on, and atomic writes (write beside, then rename).
"""

from __future__ import annotations

import dataclasses
import json
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
