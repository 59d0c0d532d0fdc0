"""The commonsense reasoning benchmark of LLM-Adapters, as a causal LM reads and answers it.

Each file ``<data_dir>/commonsense/<task>/<split>.json`` is a JSON list of objects with
``instruction`` (question, options and an "Answer format:" line), ``input`` (empty),
``output`` ("the correct answer is answer2") and ``answer`` ("answer2"). The options are
answered by label, never by text; the label layout depends on the task:

- boolq: ``true`` / ``false`` (the instruction lists no options);
- piqa: ``Solution1: ...`` / ``Solution2: ...``, answered ``solution1`` / ``solution2``;
- social_i_qa: ``Answer1:`` .. ``Answer3:``, answered ``answer1`` .. ``answer3``;
- winogrande: ``Option1:`` / ``Option2:``, answered ``option1`` / ``option2``;
- ARC-Easy, ARC-Challenge: ``Answer1:`` .. ``AnswerK:`` with K in 3..5 (mostly 4);
- openbookqa: ``Answer1:`` .. ``Answer4:``.

A causal LM sees ``format_prompt(instruction)`` and is trained on ``output`` (plus EOS)
with the loss on those tokens only (:func:`build_training_example`).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...util import BadFileError, excerpt, read_json
from .data import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

COMMONSENSE_TASKS = (
    "boolq",
    "piqa",
    "social_i_qa",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
)
"""Directory names under ``<data_dir>/commonsense/``, in the order of the LoRA/DoRA tables."""

TRAIN_TASKS = ("ARC-Easy", "ARC-Challenge", "boolq", "openbookqa")
"""The tasks whose training split is available offline (``train.json``)."""

PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
"""The Alpaca-style template LLM-Adapters trains and evaluates with (no ``input`` field)."""

IGNORE_INDEX = -100
"""Label of a position that takes no loss (the default ``ignore_index`` of cross-entropy)."""

_EXPECTED = (
    'a JSON list of objects with string fields "instruction", "output" and "answer", '
    "the answer being one of the option labels the instruction lists (e.g. answer2)"
)


@dataclass(frozen=True)
class _Layout:
    """How a task lists its options in the instruction and names them in the answer."""

    answer_regex: str
    """LLM-Adapters' ``extract_answer`` pattern for the task; its first match is the answer."""
    marker: str = ""
    """Word before each option number in the instruction: ``Answer`` in ``Answer1: ...``."""
    stem: str = ""
    """Word before the option number in the answer: ``answer`` in ``answer1``."""
    counts: tuple[int, ...] = ()
    """Numbers of options the task's files use."""
    fixed: tuple[str, ...] = ()
    """The labels of a task whose instruction lists no options (boolq)."""


_ANSWER_N = "answer1|answer2|answer3|answer4|answer5"
_LAYOUTS = {
    "boolq": _Layout("true|false", fixed=("true", "false")),
    "piqa": _Layout("solution1|solution2", "Solution", "solution", (2,)),
    "social_i_qa": _Layout(_ANSWER_N, "Answer", "answer", (3,)),
    "winogrande": _Layout("option1|option2", "Option", "option", (2,)),
    "ARC-Easy": _Layout(_ANSWER_N, "Answer", "answer", (3, 4, 5)),
    "ARC-Challenge": _Layout(_ANSWER_N, "Answer", "answer", (3, 4, 5)),
    "openbookqa": _Layout(_ANSWER_N, "Answer", "answer", (4,)),
}


@dataclass(frozen=True)
class Item:
    """One question: ``options[label] == answer``."""

    task: str
    instruction: str
    output: str
    """The training target, "the correct answer is <answer>"."""
    answer: str
    options: tuple[str, ...]
    """Option labels as the benchmark answers them, e.g. ("answer1", ..., "answer4")."""
    label: int


def _layout(task: str) -> _Layout:
    try:
        return _LAYOUTS[task]
    except KeyError:
        raise ValueError(
            f"unknown commonsense task {task!r}; choose from {COMMONSENSE_TASKS}"
        ) from None


def extract_options(task: str, instruction: str) -> tuple[str, ...]:
    """The option labels of one question, in order: ("true", "false"), ("answer1", ...).

    For the numbered layouts the options are counted from the ``<Marker>N:`` headers in the
    instruction, which must be numbered 1..K with K one of the task's usual counts.
    """
    layout = _layout(task)
    if layout.fixed:
        return layout.fixed
    numbers = [int(n) for n in re.findall(rf"\b{layout.marker}(\d+):", instruction)]
    if numbers != list(range(1, len(numbers) + 1)) or len(numbers) not in layout.counts:
        raise ValueError(
            f"{task}: expected options {layout.marker}1: .. {layout.marker}K: with K in "
            f"{layout.counts}, found numbers {excerpt(numbers)}"
        )
    return tuple(f"{layout.stem}{n}" for n in numbers)


def option_texts(task: str, instruction: str) -> tuple[str, ...]:
    """The text after each ``Answer1:`` (``Solution1:``, ``Option1:``) header; () for boolq."""
    layout = _layout(task)
    if layout.fixed:
        return ()
    marker = layout.marker
    pattern = rf"\b{marker}\d+:[ \t]*(.*?)\s*(?=\b{marker}\d+:|\n|Answer format:|$)"
    return tuple(re.findall(pattern, instruction))


def parse_answer(task: str, text: str) -> str | None:
    """The first option label in generated ``text``, as LLM-Adapters' ``extract_answer`` finds
    it (case-sensitive, over the task's whole label set); None when there is none."""
    found = re.findall(_layout(task).answer_regex, text.strip())
    return found[0] if found else None


def format_prompt(instruction: str) -> str:
    """The prompt a causal LM completes with the answer."""
    return PROMPT_TEMPLATE.format(instruction=instruction)


def _read_rows(path: Path) -> list[Any]:
    if not path.is_file():
        raise DataError(path, "commonsense data file not found", expected=_EXPECTED)
    try:
        rows = read_json(path)
    except BadFileError as err:
        raise DataError(path, err.problem, line=err.line, expected=_EXPECTED) from None
    if not isinstance(rows, list):
        raise DataError(path, f"top level is a {type(rows).__name__}", expected=_EXPECTED)
    return rows


def _parse_item(task: str, row: Any, path: Path, index: int) -> Item:
    def error(problem: str) -> DataError:
        return DataError(path, f"item {index}: {problem}", expected=_EXPECTED)

    if not isinstance(row, dict):
        raise error(f"is a {type(row).__name__}, not an object")
    fields = ("instruction", "output", "answer")
    missing = [k for k in fields if not isinstance(row.get(k), str)]
    if missing:
        raise error(f"missing or non-string field(s) {missing}")
    try:
        options = extract_options(task, row["instruction"])
    except ValueError as err:
        raise error(str(err)) from err
    if row["answer"] not in options:
        raise error(f"answer {excerpt(row['answer'])} is not among the options {options}")
    return Item(
        task=task,
        instruction=row["instruction"],
        output=row["output"],
        answer=row["answer"],
        options=options,
        label=options.index(row["answer"]),
    )


def load_items(
    task: str,
    split: str,
    data_dir: str | os.PathLike[str],
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """Items of ``<data_dir>/commonsense/<task>/<split>.json``, every one validated.

    ``limit`` keeps a subset of that many items drawn with ``seed`` and returned in file order
    (the same seed gives the same items); None keeps all. Raises :class:`DataError` (a
    ``ValueError``) naming the file, the item index and the expected format.
    """
    _layout(task)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")
    path = Path(data_dir) / "commonsense" / task / f"{split}.json"
    rows = _read_rows(path)
    items = [_parse_item(task, row, path, i) for i, row in enumerate(rows)]
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[bos] when the tokenizer starts every encoding with it, else []."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("").input_ids[:1] == [bos] else []


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's BOS, if it adds one, and never its EOS."""
    return _bos_prefix(tokenizer) + tokenizer(text, add_special_tokens=False).input_ids


def encode_with_target(
    tokenizer: PreTrainedTokenizerBase, prompt: str, target: str
) -> tuple[list[int], int]:
    """Token ids of ``prompt + target`` (see :func:`encode`) and the number of leading ids
    that belong to the prompt.

    The pair is tokenized as one text, as the model reads it; the target starts where that
    encoding first departs from the prompt's own, so a token merged across the boundary
    counts as target.
    """
    prompt_ids = encode(tokenizer, prompt)
    full_ids = encode(tokenizer, prompt + target)
    shared = 0
    for a, b in zip(prompt_ids, full_ids, strict=False):
        if a != b:
            break
        shared += 1
    return full_ids, shared


def build_training_example(
    tokenizer: PreTrainedTokenizerBase, instruction: str, output: str, max_length: int
) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` for one instruction/output pair.

    ``labels`` equal ``input_ids`` on the output tokens and the appended EOS, and
    ``IGNORE_INDEX`` on the prompt, so the loss is on the answer only. A sequence longer
    than ``max_length`` loses prompt tokens from the left (after any BOS); the answer is never
    cut, and a ValueError says so when it cannot fit with at least one prompt token.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id to end the answer with")
    ids, n_prompt = encode_with_target(tokenizer, format_prompt(instruction), output)
    ids = ids + [tokenizer.eos_token_id]
    excess = len(ids) - max_length
    if excess > 0:
        start = len(_bos_prefix(tokenizer))
        if excess > n_prompt - max(start, 1):  # keep one token of context (BOS counts)
            raise ValueError(
                f"the answer takes {len(ids) - n_prompt} tokens (with EOS) and cannot fit in "
                f"max_length={max_length} with any prompt; raise max_length"
            )
        ids = ids[:start] + ids[start + excess :]
        n_prompt -= excess
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, or its EOS id when it has no pad token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
    return pad


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of :func:`build_training_example` outputs to its longest sequence:
    ``input_ids`` with ``pad_id``, ``attention_mask`` with 0, ``labels`` with ``IGNORE_INDEX``.

    Use ``functools.partial(collate, pad_id=pad_token_id(tokenizer))`` as a DataLoader's
    ``collate_fn``. Returns (batch, max_len) int64 tensors.
    """
    width = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {
        key: torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples])
        for key, value in fill.items()
    }
