"""``lrlora train --task commonsense``: instruction-tune a causal LM on the commonsense suite.

Training uses the union of the training splits available offline (ARC-Easy, ARC-Challenge,
BoolQ, OpenBookQA; :data:`~lrlora.tasks.commonsense.TRAIN_TASKS`), shuffled with the seed,
each question in the Alpaca-style prompt with the loss on the answer tokens only
(:func:`~lrlora.tasks.commonsense.build_training_example`). Evaluation scores every option's
log-likelihood (or generates and parses, ``--eval-mode generate``) on the test sets of
``--eval-tasks`` (default: all seven), each capped at ``--eval-limit`` questions drawn with
the fixed seed :data:`EVAL_SUBSET_SEED`, so that every method and training seed is scored
on the same questions. With ``--val-fraction`` a slice of the shuffled training union is
held out and scored instead (for tuning).

The model is SmolLM2-135M-Instruct unless ``--model`` names another causal LM directory;
it has no task head, so nothing but the adapters is trained.
"""

from __future__ import annotations

import random
from functools import partial
from typing import TYPE_CHECKING, Any

from .tasks.commonsense import (
    COMMONSENSE_TASKS,
    TRAIN_TASKS,
    Item,
    build_training_example,
    collate,
    load_items,
    pad_token_id,
)
from .tasks.data import resolve_data_dir

if TYPE_CHECKING:
    from torch import nn

    from .train import TrainArgs

COMMONSENSE = "commonsense"
"""The task name ``lrlora train`` and ``lrlora bench`` use for the whole suite."""
DEFAULT_MAX_LENGTH = 256
"""Tokens per training example; the longest prompts (BoolQ, OpenBookQA) fit."""
EVAL_SUBSET_SEED = 0
"""Seed of the ``--eval-limit`` subset of each test set: fixed, the same for every run."""
MAIN_METRIC = "accuracy"
"""The score of a run: the unweighted average accuracy over the evaluated tasks."""


def load_data(args: TrainArgs) -> tuple[list[Item], list[Item], str]:
    """(training items, evaluation items, evaluation split name: "val" or "test")."""
    data_dir = resolve_data_dir(args.data_dir)
    train = [item for task in TRAIN_TASKS for item in load_items(task, "train", data_dir)]
    random.Random(args.seed).shuffle(train)
    if args.val_fraction > 0:
        n_val = max(1, round(args.val_fraction * len(train)))
        evaluation, train = train[:n_val][: args.eval_limit], train[n_val:]
        return train[: args.train_limit], evaluation, "val"
    from .lm_eval import load_test_items

    tasks = args.eval_tasks or list(COMMONSENSE_TASKS)
    evaluation = load_test_items(data_dir, tasks, args.eval_limit, EVAL_SUBSET_SEED)
    return train[: args.train_limit], evaluation, "test"


def tokenize(items: list[Item], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """``input_ids``, ``attention_mask`` and answer-only ``labels`` per training item."""
    return [build_training_example(tokenizer, i.instruction, i.output, max_length) for i in items]


def load_model(args: TrainArgs) -> tuple[nn.Module, Any]:
    """The causal LM (SmolLM2 unless ``--model``) and its tokenizer, padding with EOS."""
    from .models import load_causal_lm
    from .train import ModelLoadError

    try:
        model, tokenizer = load_causal_lm(args.model, args.cache_dir)
    except FileNotFoundError as err:
        raise ModelLoadError(f"--model: {err}") from err
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.train(), tokenizer


def data_collator(tokenizer: Any) -> Any:
    """Right-pads a batch; padded positions take no loss."""
    return partial(collate, pad_id=pad_token_id(tokenizer))


def evaluate(model: nn.Module, tokenizer: Any, items: list[Item], mode: str) -> dict[str, float]:
    """Per-task accuracy, their ``average``, and ``accuracy`` = ``score`` = the average.

    ``model`` may be a peft model: its base model (adapters included) is evaluated, since the
    scorer passes a KV cache that peft's wrapper does not forward by name.
    """
    from .lm_eval import accuracy_by_task

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    results = accuracy_by_task(inner, tokenizer, items, mode=mode)
    return {**results, MAIN_METRIC: results["average"], "score": results["average"]}
