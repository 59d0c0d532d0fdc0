"""GLUE metrics, reported in percent (0-100; correlations and MCC in -100..100).

Each task's metrics are named by :attr:`GlueTask.metrics`; :func:`compute_metrics` also
adds ``score``, the mean of those metrics (GLUE's one-number summary of a task).
scikit-learn, scipy and numpy are imported inside the functions, so the core package
imports without them (they come with the ``hf`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lrlora.app.tasks.glue import get_task

if TYPE_CHECKING:
    import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of class ids equal to the labels."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1 (0 when nothing is predicted or labelled 1)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, zero_division=0))


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0 if undefined."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def _constant(*arrays: np.ndarray) -> bool:
    return any(len(a) < 2 or a.min() == a.max() for a in arrays)


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; 0 (not NaN) when either side is constant."""
    from scipy.stats import pearsonr

    return 0.0 if _constant(predictions, labels) else float(pearsonr(predictions, labels)[0])


def spearmanr(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation; 0 (not NaN) when either side is constant."""
    from scipy.stats import spearmanr as _spearmanr

    if _constant(predictions, labels):
        return 0.0
    return float(_spearmanr(predictions, labels).statistic)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearmanr": spearmanr,
}
"""Metric name -> function of (predictions, labels) returning a fraction or correlation."""


def _as_vectors(
    predictions: Sequence[float], labels: Sequence[float], classification: bool
) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    preds = np.asarray(predictions, dtype=np.float64)
    gold = np.asarray(labels, dtype=np.float64)
    if preds.ndim != 1 or preds.shape != gold.shape:
        raise ValueError(
            f"predictions {preds.shape} and labels {gold.shape} must be 1-D and of equal length"
            + ("; take the argmax of the logits first" if classification else "")
        )
    if preds.size == 0:
        raise ValueError("no predictions to score")
    if classification:
        if not np.array_equal(preds, np.round(preds)):
            raise ValueError("classification predictions must be class ids (argmax of logits)")
        return preds.astype(np.int64), gold.astype(np.int64)
    return preds, gold


def compute_metrics(
    task_name: str, predictions: Sequence[float], labels: Sequence[float]
) -> dict[str, float]:
    """The task's GLUE metrics in percent, plus ``score``, their mean.

    ``predictions`` are class ids for classification and floats for regression (STS-B);
    lists, numpy arrays and CPU tensors are accepted. For example, MRPC gives
    ``{"accuracy": 75.0, "f1": 80.0, "score": 77.5}``.
    """
    task = get_task(task_name)
    preds, gold = _as_vectors(predictions, labels, classification=not task.is_regression)
    results = {name: 100.0 * METRICS[name](preds, gold) for name in task.metrics}
    results["score"] = sum(results.values()) / len(results)
    return results
