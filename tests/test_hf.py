import json

import pytest

import lrlora
from lrlora.inject import config_of
from tiny import bert_config, tiny_bert, train_with_trainer

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
