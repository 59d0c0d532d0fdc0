"""Commonsense data, prompts, answer-only labels, option scoring and GGUF conversion.

Real rows come from the shared data (skipped when absent); models are tiny and built here:
a bigram table whose log-likelihoods can be summed by hand, and a two-layer Llama trained
for a few dozen steps to answer a toy benchmark.
"""

from __future__ import annotations

import json
import math
import os
import time
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lrlora.app.lm_eval import evaluate_commonsense, score_options
from lrlora.app.tasks.commonsense import (
    COMMONSENSE_TASKS,
    IGNORE_INDEX,
    TRAIN_TASKS,
    build_training_example,
    collate,
    encode,
    encode_with_target,
    extract_options,
    format_prompt,
    load_items,
    option_texts,
    pad_token_id,
    parse_answer,
)
from lrlora.app.tasks.data import DataError
from tiny import make_tokenizer, tiny_llama

transformers = pytest.importorskip("transformers")

DATA_DIR = Path(
    os.environ.get("LRLORA_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)

# Instructions copied from the shared test files, one per layout.
ARC5 = (
    "Please choose the correct answer to the question: What gas in the air do we need to "
    "breathe in order to live?\n\nAnswer1: nitrogen Answer2: oxygen Answer3: carbon dioxide "
    "Answer4: hydrogen Answer5: water vapor\n\n"
    "Answer format: answer1/answer2/answer3/answer4/answer5"
)
WINOGRANDE = (
    "Please choose the correct answer to fill in the blank to complete the given sentence: "
    "Sarah was a much better surgeon than Maria so _ always got the easier cases.\n\n"
    "Option1: Sarah Option2: Maria Answer format: option1/option2"
)
PIQA = (
    "Please choose the correct solution to the question: dresser\n\nSolution1: replace drawer "
    "with bobby pin \n\nSolution2: finish, woodgrain with  bobby pin \n\n"
    "Answer format: solution1/solution2"
)
BOOLQ = (
    "Please answer the following question with true or false, question: is house tax and "
    "property tax are same?\n\nAnswer format: true/false"
)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA_DIR / "commonsense").is_dir():
        pytest.skip(f"shared commonsense data not found at {DATA_DIR} (set LRLORA_DATA)")
    return DATA_DIR


# --- options and items --------------------------------------------------------------------


def test_options_of_listed_layouts():
    assert extract_options("ARC-Easy", ARC5) == tuple(f"answer{i}" for i in range(1, 6))
    assert option_texts("ARC-Easy", ARC5)[1:3] == ("oxygen", "carbon dioxide")
    assert extract_options("winogrande", WINOGRANDE) == ("option1", "option2")
    assert option_texts("winogrande", WINOGRANDE) == ("Sarah", "Maria")
    assert extract_options("piqa", PIQA) == ("solution1", "solution2")
    assert option_texts("piqa", PIQA) == (
        "replace drawer with bobby pin",
        "finish, woodgrain with  bobby pin",
    )
    assert extract_options("boolq", BOOLQ) == ("true", "false")
    assert option_texts("boolq", BOOLQ) == ()
    with pytest.raises(ValueError, match="Answer1"):
        extract_options("openbookqa", ARC5)  # five options where openbookqa has four


@pytest.mark.parametrize(
    ("task", "options"),
    [
        ("boolq", ("true", "false")),
        ("piqa", ("solution1", "solution2")),
        ("social_i_qa", ("answer1", "answer2", "answer3")),
        ("winogrande", ("option1", "option2")),
        ("ARC-Easy", ("answer1", "answer2", "answer3", "answer4")),
        ("ARC-Challenge", ("answer1", "answer2", "answer3", "answer4")),
        ("openbookqa", ("answer1", "answer2", "answer3", "answer4")),
    ],
)
def test_first_real_row_of_each_task(data_dir, task, options):
    item = load_items(task, "test", data_dir, limit=None)[0]
    assert item.options == options
    assert item.options[item.label] == item.answer
    assert item.output == f"the correct answer is {item.answer}"
    if task != "boolq":
        assert len(option_texts(task, item.instruction)) == len(options)


def test_every_gold_answer_is_an_option(data_dir):
    """load_items validates every row; every split of every task must pass."""
    sizes = {}
    for task in COMMONSENSE_TASKS:
        for split in ("test", "train") if task in TRAIN_TASKS else ("test",):
            items = load_items(task, split, data_dir)
            assert all(item.options[item.label] == item.answer for item in items)
            sizes[task, split] = len(items)
    assert sizes["piqa", "test"] == 1838 and sizes["boolq", "train"] == 9427


def test_limit_is_a_seeded_subset_in_file_order(data_dir):
    full = load_items("openbookqa", "test", data_dir)
    a = load_items("openbookqa", "test", data_dir, limit=20, seed=3)
    assert a == load_items("openbookqa", "test", data_dir, limit=20, seed=3)
    assert a != load_items("openbookqa", "test", data_dir, limit=20, seed=4)
    positions = [full.index(item) for item in a]
    assert len(a) == 20 and positions == sorted(positions)
    assert load_items("openbookqa", "test", data_dir, limit=10_000) == full


def write_json(root: Path, task: str, split: str, rows) -> Path:
    path = root / "commonsense" / task / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


def test_malformed_files_name_file_item_and_format(tmp_path):
    good = {
        "instruction": BOOLQ,
        "input": "",
        "output": "the correct answer is true",
        "answer": "true",
    }
    cases = {
        "missing": None,
        "not a list": {"a": 1},
        "no answer": [good, {"instruction": BOOLQ, "output": "x"}],
        "bad answer": [good, dict(good, answer="yes")],
    }
    for split, rows in cases.items():
        if rows is not None:
            write_json(tmp_path, "boolq", split, rows)
        with pytest.raises(DataError, match="expected a JSON list") as err:
            load_items("boolq", split, tmp_path)
        assert f"{split}.json" in str(err.value)
        if isinstance(rows, list):
            assert "item 1" in str(err.value)
    with pytest.raises(ValueError, match="unknown commonsense task"):
        load_items("hellaswag", "test", tmp_path)


def test_a_file_that_is_not_utf8_or_quotes_a_huge_answer_is_named_briefly(tmp_path):
    path = tmp_path / "commonsense" / "boolq" / "test.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'[\n  {"instruction": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=r"test\.json:2: is not utf-8 text"):
        load_items("boolq", "test", tmp_path)
    row = {"instruction": BOOLQ, "output": "x", "answer": "y" * 1_000_000}
    path.write_text(json.dumps([row]))
    with pytest.raises(DataError, match=r"item 0: answer 'yyy[y]*\.\.\. is not among") as err:
        load_items("boolq", "test", tmp_path)
    assert "y" * 100 not in str(err.value)


def test_answer_parsing_follows_llm_adapters():
    assert parse_answer("ARC-Easy", "the correct answer is answer3 because answer1") == "answer3"
    assert parse_answer("social_i_qa", "answer4") == "answer4"  # not an option: counted wrong
    assert parse_answer("boolq", "  the correct answer is false") == "false"
    assert parse_answer("winogrande", "Option1") is None  # case-sensitive, as in the benchmark
    assert parse_answer("piqa", "no idea") is None


# --- tokenization and labels --------------------------------------------------------------


INSTRUCTION = "Which gas do we breathe?\n\nAnswer1: oxygen Answer2: neon"
OUTPUT = "the correct answer is answer1"


@pytest.mark.parametrize("bos", [False, True])
def test_labels_mask_exactly_the_prompt(bos):
    tok = make_tokenizer([format_prompt(INSTRUCTION), OUTPUT], bos=bos)
    example = build_training_example(tok, INSTRUCTION, OUTPUT, max_length=512)
    n_prompt = len(encode(tok, format_prompt(INSTRUCTION)))
    answer = tok(OUTPUT, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert (example["input_ids"][0] == tok.bos_token_id) == bos
    assert example["labels"] == [IGNORE_INDEX] * n_prompt + answer
    assert example["input_ids"][n_prompt:] == answer

    short = build_training_example(tok, INSTRUCTION, OUTPUT, max_length=len(answer) + 3)
    assert len(short["input_ids"]) == len(answer) + 3
    assert (
        short["labels"][-len(answer) :] == answer
        and short["labels"][: -len(answer)] == [IGNORE_INDEX] * 3
    )
    assert short["input_ids"][0] == (
        tok.bos_token_id if bos else example["input_ids"][-len(answer) - 3]
    )
    with pytest.raises(ValueError, match="cannot fit"):
        build_training_example(tok, INSTRUCTION, OUTPUT, max_length=len(answer))


def test_collate_pads_to_the_longest():
    tok = make_tokenizer(["a b c d"])
    batch = collate(
        [
            {"input_ids": [4, 5, 6], "attention_mask": [1, 1, 1], "labels": [-100, 5, 6]},
            {"input_ids": [7], "attention_mask": [1], "labels": [7]},
        ],
        pad_token_id(tok),
    )
    assert batch["input_ids"].tolist() == [[4, 5, 6], [7, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 6], [7, -100, -100]]


def test_a_token_merged_across_the_boundary_belongs_to_the_target():
    tok = make_tokenizer(["x y z"])
    ids, n_prompt = encode_with_target(tok, "x y", "z")  # "yz" is one (unknown) word
    assert ids == [tok.convert_tokens_to_ids("x"), tok.unk_token_id] and n_prompt == 1


# --- scoring ------------------------------------------------------------------------------


class Bigram(nn.Module):
    """logits[t] = table[input_ids[t]]: log-likelihoods are sums of table log-softmax rows."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Parameter(
            torch.randn(vocab_size, vocab_size, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])  # no KV cache


@pytest.mark.parametrize("bos", [False, True])
def test_score_is_the_summed_log_likelihood_of_the_candidate(bos):
    prompt = format_prompt(INSTRUCTION)
    candidates = ["the correct answer is answer2", "answer1", "the correct answer is answer1"]
    tok = make_tokenizer([prompt, *candidates], bos=bos)
    model = Bigram(len(tok))
    model.train()
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    expected = []
    for candidate in candidates:
        ids = (
            tok(prompt, add_special_tokens=False).input_ids[-1:]
            + tok(candidate, add_special_tokens=False).input_ids
        )
        expected.append(sum(logp[a, b].item() for a, b in pairwise(ids)))
    scores = score_options(model, tok, prompt, candidates)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert model.training  # the caller's mode is restored
    if bos:  # an empty prompt still has BOS as context
        first = tok.convert_tokens_to_ids("answer1")
        assert score_options(model, tok, "", ["answer1"]) == pytest.approx(
            [logp[tok.bos_token_id, first].item()]
        )
    else:
        with pytest.raises(ValueError, match="context"):
            score_options(model, tok, "", ["answer1"])


def toy_rows() -> dict[str, list[dict[str, str]]]:
    """Two toy tasks in the real layouts, whose answer depends on one word of the question."""
    arc = "Please choose the correct answer to the question: what color is {}?\n\nAnswer1: blue Answer2: green Answer3: red\n\nAnswer format: answer1/answer2/answer3"  # noqa: E501
    boolq = "Please answer the following question with true or false, question: is {} wet?\n\nAnswer format: true/false"  # noqa: E501

    def row(instruction: str, answer: str) -> dict[str, str]:
        return {
            "instruction": instruction,
            "input": "",
            "output": f"the correct answer is {answer}",
            "answer": answer,
        }

    return {
        "ARC-Easy": [
            row(arc.format("sky"), "answer1"),
            row(arc.format("grass"), "answer2"),
            row(arc.format("blood"), "answer3"),
        ],
        "boolq": [row(boolq.format("water"), "true"), row(boolq.format("dry sand"), "false")],
    }


@pytest.fixture(scope="module")
def toy_benchmark(tmp_path_factory):
    """A toy data dir and a tiny Llama trained on it with answer-only loss."""
    root = tmp_path_factory.mktemp("data")
    rows = toy_rows()
    for task, task_rows in rows.items():
        write_json(root, task, "test", task_rows)
    pairs = [(r["instruction"], r["output"]) for task_rows in rows.values() for r in task_rows]
    tok = make_tokenizer([format_prompt(i) + o for i, o in pairs])
    model = tiny_llama(tok)
    batch = collate([build_training_example(tok, i, o, 128) for i, o in pairs], pad_token_id(tok))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(100):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return root, model, tok


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_evaluate_picks_the_likeliest_option(toy_benchmark, mode):
    root, model, tok = toy_benchmark
    tasks = ("ARC-Easy", "boolq")
    calls = []
    results = evaluate_commonsense(
        model,
        tok,
        root,
        tasks=tasks,
        mode=mode,
        batch_size=2,
        max_new_tokens=8,
        progress=lambda *args: calls.append(args),
    )
    assert results == {"ARC-Easy": 100.0, "boolq": 100.0, "average": 100.0}
    assert calls[-1] == ("boolq", 2, 2)


def test_prompt_cache_gives_the_full_forward_scores(toy_benchmark):
    """Scoring runs the shared prefix once and the padded tails from its KV cache; the sums
    must equal one full forward per candidate."""
    _, model, tok = toy_benchmark
    prompt = format_prompt(toy_rows()["ARC-Easy"][1]["instruction"])
    candidates = ["the correct answer is answer1", "the correct answer is answer2", "answer3"]
    expected = []
    for candidate in candidates:
        ids, start = encode_with_target(tok, prompt, candidate)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
        expected.append(sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids))))
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    scores = score_options(model, tok, prompt, candidates)
    hook.remove()
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores.index(max(scores[:2])) == 1
    n_prompt = encode_with_target(tok, prompt, "answer3")[1]
    assert shapes == [(1, n_prompt), (3, 5)]  # the prompt once, then the padded tails


def test_evaluate_counts_an_unparsed_answer_as_wrong(toy_benchmark):
    root, model, tok = toy_benchmark
    results = evaluate_commonsense(
        model, tok, root, tasks=["boolq"], mode="generate", max_new_tokens=1
    )
    assert results["boolq"] == 0.0  # one token ("the") holds no label
    assert not math.isnan(results["average"])


# --- GGUF conversion ----------------------------------------------------------------------


def write_tiny_gguf(path: Path) -> None:
    """A two-layer llama GGUF with a byte-level BPE vocabulary, in float32."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        *bytes_to_unicode().values(),
        "Ġt",
        "he",
        "Ġthe",
    ]
    d, ff, kv, layers = 16, 32, 8, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_dimension_count(d // 2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), d), "output_norm.weight": (d,)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (d,),
            f"blk.{i}.ffn_norm.weight": (d,),
            f"blk.{i}.attn_q.weight": (d, d),
            f"blk.{i}.attn_k.weight": (kv, d),
            f"blk.{i}.attn_v.weight": (kv, d),
            f"blk.{i}.attn_output.weight": (d, d),
            f"blk.{i}.ffn_gate.weight": (ff, d),
            f"blk.{i}.ffn_up.weight": (ff, d),
            f"blk.{i}.ffn_down.weight": (d, ff),
        }
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_converts_to_an_equivalent_safetensors_model(tmp_path, monkeypatch):
    from lrlora.app.models import convert_gguf_to_safetensors, load_causal_lm

    write_tiny_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf_to_safetensors(tmp_path, "tiny.gguf", tmp_path / "cache" / "tiny")
    assert out == tmp_path / "cache" / "tiny" and (out / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny"]  # no temp dir left
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    model, tok = load_causal_lm(str(out))
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    gguf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    ids = gguf_tok("the theme, then").input_ids
    assert tok("the theme, then").input_ids == ids and len(ids) < len("the theme, then")
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.equal(model(x).logits, gguf_model(x).logits)
    assert tok.pad_token_id == 2 and tok.padding_side == "left" and not model.training

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert convert_gguf_to_safetensors(tmp_path, "tiny.gguf", out) == out
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a complete conversion"):
        convert_gguf_to_safetensors(tmp_path, "tiny.gguf", tmp_path / "partial")


@pytest.mark.slow
def test_smollm2_converts_and_loads(tmp_path):
    from lrlora.app.models import load_causal_lm, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    began = time.perf_counter()
    model, tok = load_causal_lm("smollm2", cache_dir=tmp_path)
    print(f"SmolLM2 conversion and load: {time.perf_counter() - began:.1f} s")
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert model.config.num_hidden_layers == 30 and tok.pad_token == "<|im_end|>"
    scores = score_options(model, tok, "The capital of France is", [" Paris", " a banana"])
    assert scores[0] > scores[1]
