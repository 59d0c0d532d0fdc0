import json

import pytest
import torch

import lrlora
from lrlora.inject import config_of
from tiny import bert_config, random_batches, tiny_bert, train_with_trainer

transformers = pytest.importorskip("transformers")


def test_trainer_callback_trains_anneals_and_exports(tmp_path):
    from lrlora.hf import LRLoRACallback

    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4, rank_lr=0.1))
    callback = LRLoRACallback(log_every=2)
    train_with_trainer(
        model,
        tmp_path / "out",
        callback,
        max_steps=12,
        gradient_accumulation_steps=2,
        use_cpu=True,
        logging_steps=100,
    )
    controller = callback.controller
    assert controller.step_count == 12  # once per optimizer step, not per micro-batch
    assert controller.tau == pytest.approx(config_of(model).tau_end)
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
    train_with_trainer(model, tmp_path / "out", max_steps=2, use_cpu=True)
    with pytest.raises(lrlora.ControllerNotSteppedError, match="LRLoRACallback"):
        lrlora.export_peft(model, tmp_path / "peft")


def test_the_callback_steps_a_controller_built_without_the_optimizer(tmp_path):
    from lrlora.hf import LRLoRACallback

    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4))
    controller = lrlora.RankController(model, None, total_steps=4)
    train_with_trainer(model, tmp_path / "out", LRLoRACallback(controller=controller),
                       max_steps=4, use_cpu=True)  # fmt: skip
    assert controller.step_count == 4 and all(layer.hardened for layer in controller.layers)


def test_the_callback_counts_and_logs_each_optimizer_step_once():
    """The Trainer calls back after every optimizer step, also one the gradient scaler
    skipped: the self-stepping controller does not count that one, nor is it logged."""
    from lrlora.hf import LRLoRACallback

    model = lrlora.inject(tiny_bert(), bert_config())
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=4)
    callback = LRLoRACallback(log_every=1, controller=controller)
    for skipped, (tokens, labels) in zip([False, True, False], random_batches(3), strict=True):
        model(tokens, labels=labels).loss.backward()
        if not skipped:
            optimizer.step()
        callback.on_optimizer_step(None, None, None)
        optimizer.zero_grad()
    assert controller.step_count == 2
    assert [point["step"] for point in callback.trajectory] == [1, 2]


def test_the_callback_gives_a_pruning_controller_a_probe_from_the_training_data(tmp_path):
    """rank_update='prune' under the Trainer: the callback builds the probe from the first
    training rows, the controller prunes at harden_at into the budget, and the adapter
    exports."""
    from lrlora.hf import LRLoRACallback

    config = bert_config(rank_update="prune", harden_at=0.5)
    model = lrlora.inject(tiny_bert(), config)
    callback = LRLoRACallback()
    train_with_trainer(model, tmp_path / "out", callback, max_steps=6, use_cpu=True)
    controller = callback.controller
    assert controller.probe is not None and controller.hardened
    assert 0 < controller.adapter_params() <= controller.target_params
    lrlora.export_peft(model, tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == {n: r for n, r in controller.hard_ranks().items() if r > 0}


def test_the_probe_batches_as_training_does_when_the_loader_has_no_batch_size():
    """The Trainer's loaders (accelerate's) batch through a batch sampler and leave
    ``batch_size`` None; the probe must still use training-sized batches (it used single
    rows, which made pruning measure on 8 examples)."""
    from types import SimpleNamespace

    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from lrlora.hf import training_probe

    rows = [{"x": torch.tensor([float(i)])} for i in range(40)]
    loader = DataLoader(rows, batch_sampler=BatchSampler(SequentialSampler(rows), 4, False))
    assert loader.batch_size is None
    seen = []

    def model(**batch):
        seen.append(batch["x"].flatten().tolist())
        return SimpleNamespace(loss=batch["x"].sum())

    probe = training_probe(model, loader, 8, torch.device("cpu"))
    for i in range(8):
        probe(i)
    assert seen == [[float(j) for j in range(4 * i, 4 * i + 4)] for i in range(8)]
