import json

import pytest
import torch

import lrlora
from tiny import bert_config, tiny_bert

transformers = pytest.importorskip("transformers")


class Rows(torch.utils.data.Dataset):
    def __init__(self, n=32, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, 100, (n, 10), generator=gen)
        self.labels = (self.tokens[:, 0] > 50).long()  # learnable from the first token

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.labels[i]}


def test_trainer_callback_trains_anneals_and_exports(tmp_path):
    from lrlora.hf import LRLoRACallback

    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4, rank_lr=0.1))
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    callback = LRLoRACallback(log_every=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=12,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=100,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Rows(),
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    trainer.train()
    controller = callback.controller
    assert controller.step_count == 12  # once per optimizer step, not per micro-batch
    assert controller.tau == pytest.approx(model.lrlora_config.tau_end)
    assert all(layer.hardened for _, layer in lrlora.lora_layers(model))
    assert [p["step"] for p in callback.trajectory] == [2, 4, 6, 8, 10, 12]
    assert callback.trajectory[0]["tau"] > callback.trajectory[-1]["tau"]
    budget = sum(2 * layer.cost_per_rank for _, layer in lrlora.lora_layers(model))
    assert controller.adapter_params() <= budget
    lrlora.export_peft(model, tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == {n: r for n, r in controller.hard_ranks().items() if r > 0}


def test_trainer_without_callback_cannot_export(tmp_path):
    model = lrlora.inject(tiny_bert(), bert_config())
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    transformers.Trainer(model=model, args=args, train_dataset=Rows(8)).train()
    with pytest.raises(lrlora.ControllerNotSteppedError, match="LRLoRACallback"):
        lrlora.export_peft(model, tmp_path / "peft")
