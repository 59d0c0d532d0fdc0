"""Tiny models built from configs (no downloads), shared by the tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A tiny BERT and a WordPiece tokenizer over the words of some SST-2/STS-B rows, saved
    as a local model directory (no downloads) for end-to-end `lrlora train` runs."""
    import re

    from transformers import BertConfig, BertModel, BertTokenizerFast

    from lrlora.app.tasks import load_split

    rows = load_split("sst2", "dev", limit=200) + load_split("stsb", "dev", limit=100)
    texts = [t for e in rows for t in (e.text_a, e.text_b) if t]
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def single_thread():
    """One torch thread: tiny models run several times faster without OpenMP hand-offs,
    above all on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A tiny Llama and a word-level tokenizer over the words of some commonsense rows (every
    test set and the training splits), saved as a local causal-LM directory."""
    from lrlora.app.tasks import resolve_data_dir
    from lrlora.app.tasks.commonsense import (
        COMMONSENSE_TASKS,
        TRAIN_TASKS,
        format_prompt,
        load_items,
    )
    from tiny import make_tokenizer, tiny_llama

    data_dir = resolve_data_dir()
    items = [i for t in COMMONSENSE_TASKS for i in load_items(t, "test", data_dir, limit=50)]
    items += [i for t in TRAIN_TASKS for i in load_items(t, "train", data_dir, limit=50)]
    tokenizer = make_tokenizer([format_prompt(i.instruction) + i.output for i in items])
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
