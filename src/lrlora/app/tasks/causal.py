"""``lrlora train --task commonsense``: instruction-tune a causal LM on the commonsense suite.

Training uses the union of the training splits available offline (ARC-Easy, ARC-Challenge,
BoolQ, OpenBookQA; :data:`~lrlora.app.tasks.commonsense.TRAIN_TASKS`), shuffled with the
seed, each question in the Alpaca-style prompt with the loss on the answer tokens only
(:func:`~lrlora.app.tasks.commonsense.build_training_example`). Evaluation scores every
option's log-likelihood (or generates and parses, ``eval_mode="generate"``) on the test sets
of ``eval_tasks`` (default: all seven), each capped at ``eval_limit`` questions drawn with
the fixed seed :data:`EVAL_SUBSET_SEED`, so that every method and training seed is scored
on the same questions. With ``val_fraction`` a slice of the shuffled training union is held
out and scored instead (for tuning).

The model is SmolLM2-135M-Instruct unless ``model`` names another causal LM directory; it
has no task head, so nothing but the adapters is trained.
"""

from __future__ import annotations

import random
from functools import partial
from typing import TYPE_CHECKING, Any

from ..lm_eval import accuracy_by_task, load_test_items
from ..models import load_causal_lm
from .base import Loaded, ModelLoadError, TaskOptions, check_model_dir
from .commonsense import (
    COMMONSENSE_TASKS,
    TRAIN_TASKS,
    Item,
    build_training_example,
    collate,
    load_items,
    pad_token_id,
)
from .data import resolve_data_dir

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

COMMONSENSE = "commonsense"
"""The task name ``lrlora train`` and ``lrlora bench`` use for the whole suite."""
DEFAULT_MAX_LENGTH = 256
"""Tokens per training example; the longest prompts (BoolQ, OpenBookQA) fit."""
EVAL_SUBSET_SEED = 0
"""Seed of the ``eval_limit`` subset of each test set: fixed, the same for every run."""
MAIN_METRIC = "accuracy"
"""The score of a run: the unweighted average accuracy over the evaluated tasks."""
EVAL_MODES = ("score", "generate")


class CommonsenseTask:
    """The commonsense suite behind the :class:`~lrlora.app.tasks.base.Task` interface.

    Args:
        eval_tasks: the test sets to score (default: all seven).
        eval_mode: ``"score"`` or ``"generate"``.
        cache_dir: where SmolLM2's GGUF is converted once (default: the model cache).
    """

    name = COMMONSENSE
    main_metric = MAIN_METRIC
    peft_task_type = "CAUSAL_LM"
    evaluates_during_training = False  # scoring the test sets takes minutes
    default_batch_size = 4
    default_max_steps = 48
    """Sized for SmolLM2-135M on a CPU (the commonsense suite's sizing): a step of 4
    questions takes seconds, where GLUE's 32 took most of a minute."""

    def __init__(
        self,
        eval_tasks: list[str] | None = None,
        eval_mode: str = "score",
        cache_dir: str | None = None,
    ) -> None:
        self.eval_tasks = list(eval_tasks or COMMONSENSE_TASKS)
        self.eval_mode = eval_mode
        self.cache_dir = cache_dir

    def load(self, options: TaskOptions) -> Loaded:
        train_items, eval_items, split = self.load_data(options)
        model, tokenizer = self.load_model(options.model)
        max_length = options.max_length or DEFAULT_MAX_LENGTH
        return Loaded(
            model=model,
            tokenizer=tokenizer,
            model_path=model.name_or_path,
            train_set=tokenize(train_items, tokenizer, max_length),
            eval_set=eval_items,
            eval_split=split,
            max_length=max_length,
        )

    def load_data(self, options: TaskOptions) -> tuple[list[Item], list[Item], str]:
        """(training items, evaluation items, evaluation split name: "val" or "test")."""
        data_dir = resolve_data_dir(options.data_dir)
        train = [item for task in TRAIN_TASKS for item in load_items(task, "train", data_dir)]
        random.Random(options.seed).shuffle(train)
        if options.val_fraction > 0:
            n_val = max(1, round(options.val_fraction * len(train)))
            evaluation, train = train[:n_val][: options.eval_limit], train[n_val:]
            return train[: options.train_limit], evaluation, "val"
        tasks = self.eval_tasks
        evaluation = load_test_items(data_dir, tasks, options.eval_limit, EVAL_SUBSET_SEED)
        return train[: options.train_limit], evaluation, "test"

    def load_model(self, model: str | None) -> tuple[nn.Module, Any]:
        """The causal LM (SmolLM2 unless ``model``) and its tokenizer, padding with EOS."""
        if model is not None and model != "smollm2":
            check_model_dir(model)
        try:
            lm, tokenizer = load_causal_lm(model, self.cache_dir)
        except FileNotFoundError as err:
            raise ModelLoadError(f"--model: {err}") from err
        lm.config.pad_token_id = tokenizer.pad_token_id
        return lm.train(), tokenizer

    def heads(self, model: nn.Module) -> list[str]:
        return []  # a causal LM's lm_head stays frozen

    def collator(self, tokenizer: Any) -> Callable:
        """Right-pads a batch; padded positions take no loss."""
        return partial(collate, pad_id=pad_token_id(tokenizer))

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        raise NotImplementedError("commonsense is scored by generation, not by the Trainer")

    def evaluate(self, trainer: Any, loaded: Loaded) -> dict[str, float]:
        return evaluate(trainer.model, loaded.tokenizer, loaded.eval_set, self.eval_mode)


def tokenize(items: list[Item], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """``input_ids``, ``attention_mask`` and answer-only ``labels`` per training item."""
    return [build_training_example(tokenizer, i.instruction, i.output, max_length) for i in items]


def evaluate(model: nn.Module, tokenizer: Any, items: list[Item], mode: str) -> dict[str, float]:
    """Per-task accuracy, their ``average``, and ``accuracy`` = ``score`` = the average.

    ``model`` may be a peft model: its base model (adapters included) is evaluated, since the
    scorer passes a KV cache that peft's wrapper does not forward by name.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    results = accuracy_by_task(inner, tokenizer, items, mode=mode)
    return {**results, MAIN_METRIC: results["average"], "score": results["average"]}
