"""Tiny models built from configs (no downloads), imported by the tests as ``tiny``."""

from __future__ import annotations

import torch

import lrlora

BERT_TARGETS = [
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def bert_config(**overrides) -> lrlora.LRLoRAConfig:
    settings = dict(
        target_modules=BERT_TARGETS,
        modules_to_save=["classifier"],
        r_max=4,
        budget_rank=2,
        rank_update="shared",  # the soft gates' mechanics; pruning has tests of its own
        rebalance_every=5,
    )
    settings.update(overrides)
    return lrlora.LRLoRAConfig(**settings)


def randomize_adapters(model, seed: int = 0) -> None:
    """Give B non-zero values so that the adapter changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lrlora.lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)


def random_batches(steps: int, batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """``steps`` (tokens (batch, 10), labels (batch,)) pairs for the tiny BERT."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 100, (batch, 10), generator=gen),
         torch.randint(0, 2, (batch,), generator=gen))
        for _ in range(steps)
    ]  # fmt: skip


def make_tokenizer(texts: list[str], bos: bool = False):
    """A word-level tokenizer over the words of ``texts``; BOS prepended when ``bos``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts for w, _ in split.pre_tokenize_str(text)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def tiny_llama(tokenizer, seed: int = 0):
    """A two-layer Llama (hidden 32) over ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


class TokenRows(torch.utils.data.Dataset):
    """``n`` rows of 10 tokens for the tiny BERT; the label is learnable from the first token."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, 100, (n, 10), generator=gen)
        self.labels = (self.tokens[:, 0] > 50).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.labels[i]}


def train_with_trainer(model, output_dir, callback=None, lr: float = 1e-2, **arguments):
    """Train ``model`` on :class:`TokenRows` with the transformers Trainer and LR-LoRA's
    optimizer groups (``arguments`` go to ``TrainingArguments``); returns the Trainer."""
    import transformers

    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=lr))
    settings = dict(per_device_train_batch_size=4, report_to=[], save_strategy="no",
                    disable_tqdm=True)  # fmt: skip
    trainer = transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(output_dir=str(output_dir), **settings | arguments),
        train_dataset=TokenRows(),
        optimizers=(optimizer, None),
        callbacks=[callback] if callback else [],
    )
    trainer.train()
    return trainer
