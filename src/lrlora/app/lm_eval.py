"""Commonsense accuracy of a causal LM, by option likelihood or by generation.

``score``: each option label is written as the training target ("the correct answer is
answer2") and the option whose target has the highest summed log-likelihood given the
prompt wins, ``argmax_k sum_t log p(y_k,t | prompt, y_k,<t)``; the prompt runs once and
the options continue from its KV cache as one batch. ``generate``: greedy decoding, then the
first option label in the text, as the LLM-Adapters benchmark parses it (no label counts as
wrong); LLM-Adapters itself decodes with 4 beams.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from lrlora.app.tasks.commonsense import (
    COMMONSENSE_TASKS,
    Item,
    encode,
    encode_with_target,
    format_prompt,
    load_items,
    pad_token_id,
    parse_answer,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CANDIDATE_TEMPLATE = "the correct answer is {option}"
"""How an option is written when scored: the form of every ``output`` in the data."""

Progress = Callable[[str, int, int], None]
"""Called as ``progress(task, items_done, items_total)`` after every batch."""


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside; the previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad(sequences: Sequence[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask), both (batch, longest), padded on the left or right."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[i, span] = torch.tensor(ids)
        mask[i, span] = 1
    return input_ids, mask


def _common_prefix_length(sequences: Sequence[list[int]]) -> int:
    length = 0
    for column in zip(*sequences, strict=False):
        if any(token != column[0] for token in column):
            break
        length += 1
    return length


def _output_cache(output: object) -> object | None:
    """The KV cache a forward returned: ``cache`` since transformers 5.x, ``past_key_values``
    before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _cache_argument(model: nn.Module) -> str:
    """The forward argument that takes a KV cache (renamed in transformers 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _target_logprobs(
    model: nn.Module, sequences: Sequence[tuple[list[int], int]], pad_id: int
) -> list[float]:
    """For each ``(ids, start)``: ``sum_{t >= start} log p(ids[t] | ids[:t])``.

    The prefix all sequences share (the prompt and "the correct answer is") runs once and its
    KV cache is repeated for the batch of their tails, which cuts the cost of a question by
    about its number of options. A model that returns no cache runs the full sequences.
    """
    for ids, start in sequences:
        if not 1 <= start < len(ids):
            raise ValueError(
                f"need at least one context and one target token, got start={start} of {len(ids)}"
            )
    device = _device(model)
    shared = min(
        _common_prefix_length([ids for ids, _ in sequences]),
        *(len(ids) - 1 for ids, _ in sequences),
    )
    head_logits, cache = None, None
    if shared > 0:
        head = model(
            input_ids=torch.tensor([sequences[0][0][:shared]], device=device), use_cache=True
        )
        head_logits, cache = head.logits[0], _output_cache(head)
    tail_inputs = {}
    if hasattr(cache, "batch_repeat_interleave"):  # not None, nor a legacy tuple
        cache.batch_repeat_interleave(len(sequences))
        tail_inputs[_cache_argument(model)] = cache
    else:
        shared = 0
    tails, tail_mask = _pad([ids[shared:] for ids, _ in sequences], pad_id, left=False)
    mask = torch.cat([torch.ones(len(sequences), shared, dtype=torch.long), tail_mask], dim=1)
    tail_logits = model(
        input_ids=tails.to(device), attention_mask=mask.to(device), **tail_inputs
    ).logits  # (batch, longest tail, vocab)
    scores = []
    for row, (ids, start) in zip(tail_logits, sequences, strict=True):
        # The logits at position p predict token p + 1; positions below `shared` are the head's.
        logits = row[max(start - 1 - shared, 0) : len(ids) - 1 - shared]
        if start - 1 < shared:
            logits = torch.cat([head_logits[start - 1 : shared], logits])
        logp = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(ids[start:], device=logp.device)
        scores.append(logp.gather(-1, target[:, None]).sum().item())
    return scores


def score_options(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, candidates: list[str]
) -> list[float]:
    """Summed log-likelihood of each candidate continuation of ``prompt``, one batch."""
    sequences = [encode_with_target(tokenizer, prompt, c) for c in candidates]
    with _eval_mode(model):
        return _target_logprobs(model, sequences, pad_token_id(tokenizer))


def _predict_by_score(model: nn.Module, tokenizer: PreTrainedTokenizerBase, item: Item) -> str:
    prompt = format_prompt(item.instruction)
    candidates = [CANDIDATE_TEMPLATE.format(option=option) for option in item.options]
    scores = score_options(model, tokenizer, prompt, candidates)
    return item.options[scores.index(max(scores))]


def _predict_by_generation(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, items: list[Item], max_new_tokens: int
) -> list[str | None]:
    pad_id = pad_token_id(tokenizer)
    prompts = [encode(tokenizer, format_prompt(item.instruction)) for item in items]
    input_ids, mask = _pad(prompts, pad_id, left=True)
    device = _device(model)
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
    )
    texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [parse_answer(item.task, text) for item, text in zip(items, texts, strict=True)]


def accuracy_by_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Item],
    mode: str = "score",
    batch_size: int = 8,
    max_new_tokens: int = 32,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Accuracy in percent on ``items``, per task (in order of first appearance), and the
    tasks' unweighted ``"average"``.

    ``batch_size`` is the number of questions per ``generate`` call and per progress report;
    ``score`` mode runs one question at a time, its options as one batch.
    """
    if mode not in ("score", "generate"):
        raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}")
    by_task: dict[str, list[Item]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    if not by_task:
        raise ValueError("no items to evaluate")
    results: dict[str, float] = {}
    with _eval_mode(model):
        for task, task_items in by_task.items():
            correct = 0
            for start in range(0, len(task_items), batch_size):
                batch = task_items[start : start + batch_size]
                if mode == "score":
                    predictions = [_predict_by_score(model, tokenizer, item) for item in batch]
                else:
                    predictions = _predict_by_generation(model, tokenizer, batch, max_new_tokens)
                correct += sum(p == item.answer for p, item in zip(predictions, batch, strict=True))
                if progress is not None:
                    progress(task, start + len(batch), len(task_items))
            results[task] = 100.0 * correct / len(task_items)
    results["average"] = sum(results.values()) / len(results)
    return results


def load_test_items(
    data_dir: str | os.PathLike[str],
    tasks: Sequence[str] = COMMONSENSE_TASKS,
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """The test items of ``tasks``, each capped at ``limit`` (a subset drawn with ``seed``,
    as :func:`~lrlora.tasks.commonsense.load_items` draws it)."""
    if not tasks:
        raise ValueError("no tasks to evaluate")
    items = []
    for task in tasks:
        found = load_items(task, "test", data_dir, limit=limit, seed=seed)
        if not found:
            raise ValueError(f"{task}: no test items to evaluate (limit={limit})")
        items += found
    return items


def evaluate_commonsense(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data_dir: str | os.PathLike[str],
    tasks: Sequence[str] = COMMONSENSE_TASKS,
    limit: int | None = None,
    seed: int = 0,
    mode: str = "score",
    batch_size: int = 8,
    max_new_tokens: int = 32,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Accuracy in percent on each task's test split and their unweighted ``"average"``.

    ``limit`` and ``seed`` pick the same subset of each task as :func:`load_items`; the
    other arguments are :func:`accuracy_by_task`'s.
    """
    if mode not in ("score", "generate"):
        raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}")
    items = load_test_items(data_dir, tasks, limit, seed)
    return accuracy_by_task(model, tokenizer, items, mode, batch_size, max_new_tokens, progress)
