"""What every benchmark result records beside its numbers, and where a stale one is kept."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform()}


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


def stale_path(path: Path) -> Path:
    """Where a stale result at ``path`` is kept: ``<results dir>/stale/<stem>.<mtime>.json``,
    made unique with a counter. The name comes from the path and the file's modification
    time, never from the file's contents, so a result cannot choose where it is moved."""
    stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S")
    stale = path.parent / "stale"
    keep = stale / f"{path.stem}.{stamp}.json"
    count = 1
    while keep.exists():
        keep = stale / f"{path.stem}.{stamp}-{count}.json"
        count += 1
    return keep


def keep_aside(path: Path) -> None:
    """Move the result at ``path`` to ``stale/`` (see :func:`stale_path`)."""
    keep = stale_path(path)
    keep.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, keep)
