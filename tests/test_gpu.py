"""LR-LoRA on a CUDA device: the same numbers as on the CPU, the controller's bookkeeping
(budget projection, re-balancing by QR/SVD, hardening) on device tensors, bf16 autocast,
save/resume, the PEFT export and the transformers Trainer. Skipped where no GPU is present
(CI); run with ``pytest -m gpu`` on a machine that has one."""

import copy
import json

import pytest
import torch

import lrlora
from tiny import bert_config, random_batches, randomize_adapters, tiny_bert, train_with_trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


def _train(model, steps: int, batches, lr: float = 1e-2):
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=lr))
    controller = lrlora.RankController(model, optimizer, total_steps=steps)
    device = next(model.parameters()).device
    for tokens, labels in batches[:steps]:
        model(tokens.to(device), labels=labels.to(device)).loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    return optimizer, controller


def test_forward_and_gradients_match_the_cpu(tokens):
    cpu = lrlora.inject(tiny_bert(), bert_config(init_rank=3.3))
    randomize_adapters(cpu)
    gpu = copy.deepcopy(cpu).to(CUDA)
    labels = torch.tensor([0, 1, 1])
    cpu_loss = cpu(tokens, labels=labels).loss
    gpu_loss = gpu(tokens.to(CUDA), labels=labels.to(CUDA)).loss
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, atol=1e-5, rtol=1e-4)
    cpu_loss.backward()
    gpu_loss.backward()
    for (name, want), (_, got) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        if want.grad is not None:
            torch.testing.assert_close(got.grad.cpu(), want.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_training_keeps_the_budget_and_merges_exactly_on_cuda(tokens):
    config = bert_config(init_rank=4, rank_lr=0.2, rebalance_every=3)
    model = lrlora.inject(tiny_bert(), config).to(CUDA)
    _, controller = _train(model, 12, random_batches(12))
    assert controller.step_count == 12
    budget = sum(2 * layer.cost_per_rank for _, layer in lrlora.lora_layers(model))
    controller.harden()
    assert controller.adapter_params() <= budget
    assert all(layer.rho.device.type == "cuda" for _, layer in lrlora.lora_layers(model))
    with torch.no_grad():
        expected = model(tokens.to(CUDA)).logits
        merged = lrlora.merge(model)(tokens.to(CUDA)).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_trains_with_a_float32_rank():
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=3.5, rank_lr=0.2)).to(CUDA)
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=6)
    before = {n: layer.rho.item() for n, layer in lrlora.lora_layers(model)}
    for tokens, labels in random_batches(6):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(tokens.to(CUDA), labels=labels.to(CUDA)).loss
        assert torch.isfinite(loss)
        loss.backward()
        for _, layer in lrlora.lora_layers(model):
            assert layer.rho.dtype == torch.float32
            assert torch.isfinite(layer.rho.grad)
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    after = {n: layer.rho.item() for n, layer in lrlora.lora_layers(model)}
    assert after != before  # the rank moved under bf16 activations


def test_save_and_resume_on_cuda_end_where_an_uninterrupted_run_does(tmp_path):
    config = bert_config(init_rank=4, rank_lr=0.2, rebalance_every=3)
    batches = random_batches(10)

    def setup():
        model = lrlora.inject(tiny_bert(), config).to(CUDA)
        optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
        return model, optimizer, lrlora.RankController(model, optimizer, total_steps=10)

    def steps(model, optimizer, controller, part):
        for tokens, labels in part:
            model(tokens.to(CUDA), labels=labels.to(CUDA)).loss.backward()
            optimizer.step()
            controller.step()
            optimizer.zero_grad()

    full = setup()
    steps(*full, batches)
    first = setup()
    steps(*first, batches[:5])
    lrlora.save(first[0], tmp_path / "ckpt", controller=first[2], optimizer=first[1])
    resumed = setup()
    lrlora.resume(tmp_path / "ckpt", *resumed)
    steps(*resumed, batches[5:])
    want, got = full[0].state_dict(), resumed[0].state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4, msg=key)
    assert resumed[2].state_dict() == full[2].state_dict()


def test_exported_adapter_gives_the_same_logits_in_peft_on_cuda(tmp_path, tokens):
    peft = pytest.importorskip("peft")
    tiny_bert().save_pretrained(tmp_path / "base")
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4, rank_lr=0.2)).to(CUDA)
    _, controller = _train(model, 8, random_batches(8))
    controller.harden()
    with torch.no_grad():
        expected = model(tokens.to(CUDA)).logits
    lrlora.export_peft(model, tmp_path / "peft")
    rank_pattern = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert rank_pattern["rank_pattern"]
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base").to(CUDA).eval()
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "peft").to(CUDA).eval()
    with torch.no_grad():
        got = loaded(input_ids=tokens.to(CUDA)).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_trainer_callback_steps_the_controller_on_cuda(tmp_path):
    pytest.importorskip("transformers")
    from lrlora.hf import LRLoRACallback

    model = lrlora.inject(tiny_bert(), bert_config(init_rank=4, rank_lr=0.1))
    callback = LRLoRACallback()
    train_with_trainer(model, tmp_path / "out", callback, max_steps=8)
    assert next(model.parameters()).device.type == "cuda"
    assert callback.controller.step_count == 8
    assert all(layer.hardened for _, layer in lrlora.lora_layers(model))


def test_adapter_and_controller_steps_never_wait_for_the_device():
    """A host read of a device value (``.item()``, ``int(tensor)``, a copy to the host)
    stalls the step until the GPU catches up; LR-LoRA's forward, backward and optimizer
    step, with the controller's rank update before it and its own step after it, must not
    do one (measured cost before: 1.7x LoRA's step time on an H200)."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    config = lrlora.LRLoRAConfig(
        target_modules=["0", "2"],
        r_max=8,
        budget_rank=2,
        init_rank=8,
        rebalance_every=0,
        rank_update="shared",
    )
    model = lrlora.inject(model, config).to(CUDA)
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=20)
    x = torch.randn(32, 64, device=CUDA)
    for step in range(20):
        if step == 0:  # the first step copies the controller's constants to the device
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            continue
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = model(x).pow(2).mean()
            loss.backward()
            optimizer.step()  # the budget projection binds: every layer starts at R
        finally:
            torch.cuda.set_sync_debug_mode("default")
        optimizer.zero_grad()
    assert controller.step_count == 20
    budget = sum(2 * layer.cost_per_rank for _, layer in lrlora.lora_layers(model))
    assert controller._soft_cost(controller._rhos(), controller.tau) <= budget * (1 + 1e-6)
    assert controller.last_shift > 0
