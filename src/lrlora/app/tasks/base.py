"""What ``lrlora train`` needs from a task: load its data and model, collate a batch, score
a trained model, and name its main metric (:class:`Task`). A GLUE task
(:class:`~lrlora.app.tasks.sequence.ClassificationTask`) and the commonsense suite
(:class:`~lrlora.app.tasks.causal.CommonsenseTask`) implement it. A task knows nothing of
adapters: it hands over a plain model and scores whatever model it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import nn


class ModelLoadError(OSError):
    """The model or its tokenizer could not be loaded."""


def check_model_dir(model: str) -> None:
    """A local directory given as ``--model`` must hold a Hugging Face model (its
    ``config.json``); anything else named there is left to the loader (a hub name)."""
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"--model {model}: {path} holds no config.json, so it is not a Hugging Face model "
            "directory; give a directory written by save_pretrained (config.json, weights, "
            "tokenizer) or a model name."
        )


@dataclass(frozen=True)
class TaskOptions:
    """The run's settings a task reads when it loads."""

    data_dir: str | None
    seed: int
    train_limit: int | None
    eval_limit: int | None
    val_fraction: float
    model: str | None
    max_length: int | None


@dataclass
class Loaded:
    """A task's data and model, ready to train."""

    model: nn.Module
    tokenizer: Any
    model_path: str
    """Where the model came from (recorded in the exported adapter)."""
    train_set: list[dict[str, Any]]
    """Tokenized training rows."""
    eval_set: list[Any]
    """Tokenized rows (GLUE) or commonsense :class:`~lrlora.app.tasks.commonsense.Item` s."""
    eval_split: str
    max_length: int


class Task(Protocol):
    name: str
    main_metric: str
    peft_task_type: str
    """The peft ``task_type`` of the task's model (and of the exported adapter)."""
    evaluates_during_training: bool
    """Whether the Trainer can score the evaluation set every N steps (``--eval-every``)."""
    default_batch_size: int
    default_max_steps: int

    def load(self, options: TaskOptions) -> Loaded:
        """Data (shuffled with the seed, limited) and model with its tokenizer."""

    def heads(self, model: nn.Module) -> list[str]:
        """The modules every method trains fully (a classification head), if any."""

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Pads a batch of training rows."""

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        """Metrics of a Trainer ``EvalPrediction`` (when ``evaluates_during_training``)."""

    def evaluate(self, trainer: Any, loaded: Loaded) -> dict[str, float]:
        """Score the trainer's (trained) model on ``loaded.eval_set``; every process of a
        data-parallel run returns the same metrics."""
