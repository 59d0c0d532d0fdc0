"""Tiny models built from configs (no downloads), shared by the tests."""

from __future__ import annotations

import pytest
import torch

import lrlora

BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def bert_config(**overrides) -> lrlora.LRLoRAConfig:
    settings = dict(target_modules=BERT_TARGETS, modules_to_save=["classifier"], r_max=4,
                    budget_rank=2, rebalance_every=5)  # fmt: skip
    settings.update(overrides)
    return lrlora.LRLoRAConfig(**settings)


def randomize_adapters(model, seed: int = 0) -> None:
    """Give B non-zero values so that the adapter changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lrlora.lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(1))
