"""Commonsense accuracy of a causal LM, by option likelihood or by generation.

``score``: each option label is written as the training target ("the correct answer is
answer2") and the option whose target has the highest summed log-likelihood given the
prompt wins, ``argmax_k sum_t log p(y_k,t | prompt, y_k,<t)``. ``generate``: greedy
decoding, then the first option label in the text, as the LLM-Adapters benchmark parses it
(no label counts as wrong). LLM-Adapters decodes with 4 beams; greedy is cheaper and
close.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from lrlora.tasks.commonsense import (
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


def _target_logprobs(
    model: nn.Module, sequences: Sequence[tuple[list[int], int]], pad_id: int
) -> list[float]:
    """For each ``(ids, start)``: ``sum_{t >= start} log p(ids[t] | ids[:t])``, one forward."""
    for ids, start in sequences:
        if not 1 <= start < len(ids):
            raise ValueError(
                f"need at least one context and one target token, got start={start} of {len(ids)}"
            )
    input_ids, mask = _pad([ids for ids, _ in sequences], pad_id, left=False)
    device = _device(model)
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
    scores = []
    for row, (ids, start) in zip(logits, sequences, strict=True):
        # The logits at position t - 1 predict token t.
        logp = torch.log_softmax(row[start - 1 : len(ids) - 1].float(), dim=-1)
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


def _predict_by_score(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, items: list[Item]
) -> list[str | None]:
    sequences = []
    for item in items:
        prompt = format_prompt(item.instruction)
        for option in item.options:
            target = CANDIDATE_TEMPLATE.format(option=option)
            sequences.append(encode_with_target(tokenizer, prompt, target))
    scores = iter(_target_logprobs(model, sequences, pad_token_id(tokenizer)))
    predictions = []
    for item in items:
        item_scores = [next(scores) for _ in item.options]
        predictions.append(item.options[item_scores.index(max(item_scores))])
    return predictions


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

    ``limit`` and ``seed`` pick the same subset of each task as :func:`load_items`.
    ``batch_size`` is the number of questions per forward pass (in ``score`` mode each
    question brings one sequence per option).
    """
    if mode not in ("score", "generate"):
        raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}")
    if not tasks:
        raise ValueError("no tasks to evaluate")
    results: dict[str, float] = {}
    with _eval_mode(model):
        for task in tasks:
            items = load_items(task, "test", data_dir, limit=limit, seed=seed)
            if not items:
                raise ValueError(f"{task}: no test items to evaluate (limit={limit})")
            correct = 0
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                if mode == "score":
                    predictions = _predict_by_score(model, tokenizer, batch)
                else:
                    predictions = _predict_by_generation(model, tokenizer, batch, max_new_tokens)
                correct += sum(p == item.answer for p, item in zip(predictions, batch, strict=True))
                if progress is not None:
                    progress(task, start + len(batch), len(items))
            results[task] = 100.0 * correct / len(items)
    results["average"] = sum(results.values()) / len(results)
    return results
