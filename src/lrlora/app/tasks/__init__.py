"""GLUE tasks available offline: registry, loaders and metrics (values in percent)."""

from lrlora.app.tasks.data import DataError, resolve_data_dir
from lrlora.app.tasks.glue import TASKS, Example, GlueTask, get_task, load_split
from lrlora.app.tasks.metrics import compute_metrics

__all__ = [
    "TASKS",
    "DataError",
    "Example",
    "GlueTask",
    "compute_metrics",
    "get_task",
    "load_split",
    "resolve_data_dir",
]
