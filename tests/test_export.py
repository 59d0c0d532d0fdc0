import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lrlora
from lrlora.util import BadFileError
from tiny import bert_config, random_batches, tiny_bert, tiny_gpt2


def _setup(config, total_steps):
    model = lrlora.inject(tiny_bert(), config)
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    return model, optimizer, lrlora.RankController(model, optimizer, total_steps=total_steps)


def _steps(model, optimizer, controller, batches):
    for tokens, labels in batches:
        model(tokens, labels=labels).loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()


def test_interrupted_run_ends_where_an_uninterrupted_one_does(tmp_path):
    config = bert_config(init_rank=4, rank_lr=0.2, rebalance_every=3)
    batches = random_batches(10)
    full = _setup(config, 10)
    _steps(*full, batches)

    first = _setup(config, 10)
    _steps(*first, batches[:5])
    lrlora.save(
        first[0], tmp_path / "ckpt", controller=first[2], optimizer=first[1], extra={"step": 5}
    )
    resumed = _setup(config, 10)
    assert lrlora.resume(tmp_path / "ckpt", resumed[0], resumed[1], resumed[2]) == {"step": 5}
    assert resumed[2].step_count == 5
    _steps(*resumed, batches[5:])

    want, got = full[0].state_dict(), resumed[0].state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5, msg=key)
    assert resumed[2].state_dict() == full[2].state_dict()


def test_a_scaling_changed_at_hardening_is_kept_by_save_load_and_export(tmp_path, tokens):
    """prune_scaling='between' changes a layer's scaling when its rank is hardened; a saved
    and loaded adapter, and the stock PEFT export, give the same outputs."""
    config = bert_config(rank_update="prune", harden_at=0.5, prune_scaling="between")
    model = lrlora.inject(tiny_bert(), config)
    batches = random_batches(6)
    probe = lambda i: model(*batches[i % len(batches)][:1],  # noqa: E731
                            labels=batches[i % len(batches)][1]).loss  # fmt: skip
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=6, probe=probe)
    _steps(model, optimizer, controller, batches)
    assert controller.hardened
    layer = next(layer for _, layer in lrlora.lora_layers(model))
    assert layer.scaling() != layer.alpha / layer.ref_rank  # the change this is about
    expected = model(tokens).logits
    lrlora.save(model, tmp_path / "adapter")
    loaded = lrlora.load(tiny_bert(), tmp_path / "adapter")
    torch.testing.assert_close(loaded(tokens).logits, expected)
    merged = lrlora.merge(model)
    torch.testing.assert_close(merged(tokens).logits, expected, atol=1e-5, rtol=1e-4)


def test_save_load_gives_same_outputs_and_refuses_overwrite(tmp_path, tokens):
    model, optimizer, controller = _setup(bert_config(), 4)
    _steps(model, optimizer, controller, random_batches(4))
    controller.harden()
    expected = model(tokens).logits
    lrlora.save(model, tmp_path / "adapter")
    assert not list(tmp_path.glob(".adapter*"))  # no staging leftovers
    loaded = lrlora.load(tiny_bert(), tmp_path / "adapter")
    torch.testing.assert_close(loaded(tokens).logits, expected)
    assert [r["hard_rank"] for r in lrlora.rank_report(loaded)] == [
        r["hard_rank"] for r in lrlora.rank_report(model)
    ]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        lrlora.save(model, tmp_path / "adapter")
    lrlora.save(model, tmp_path / "adapter", overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="never replaced, even with overwrite=True"):
        lrlora.save(model, tmp_path / "mine", overwrite=True)
    with pytest.raises(FileExistsError, match="never replaced, even with overwrite=True"):
        lrlora.export_peft(model, tmp_path / "adapter", overwrite=True)  # not a PEFT adapter
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def _saved_adapter(path):
    """A trained, hardened adapter saved at ``path``."""
    model, optimizer, controller = _setup(bert_config(), 4)
    _steps(model, optimizer, controller, random_batches(4))
    controller.harden()
    return lrlora.save(model, path)


def _edit_json(file, **changes):
    data = json.loads(file.read_text())
    for key, value in changes.items():
        target, _, leaf = key.rpartition(".")
        (data[target] if target else data)[leaf] = value
    file.write_text(json.dumps(data))


def _edit_tensor(file, key, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    tensors[key] = change(tensors[key])
    save_file(tensors, str(file))


def _wider_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config)


QUERY = "bert.encoder.layer.0.attention.self.query"


@pytest.mark.parametrize(
    ("edit", "file", "message"),
    [
        (None, "adapter.safetensors",
         f"{QUERY}.lora_A of shape (4, 32), where this model with r_max=4 (lrlora_config.json) "
         "needs (4, 48)"),
        (lambda d: _edit_json(d / "lrlora_config.json", **{"config.r_max": 8}),
         "adapter.safetensors", f"{QUERY}.lora_A of shape (4, 32), where this model with r_max=8"),
        (lambda d: _edit_json(d / "lrlora_config.json", **{"config.modules_to_save": ["bert"]}),
         "lrlora_config.json", "names bert in modules_to_save, but adapter.safetensors holds no"),
        (lambda d: _edit_json(d / "lrlora_config.json", reference_rank=4.0),
         "lrlora_config.json", "reference_rank is 4.0, where its config's budget gives 2.0"),
        (lambda d: _edit_json(d / "lrlora_config.json", reference_rank="four"),
         "lrlora_config.json", "['reference_rank'] is 'four', not a finite number"),
        (lambda d: _edit_json(d / "lrlora_config.json", layers=[QUERY]),
         "lrlora_config.json", "lists other adapted layers"),
        (lambda d: _edit_json(d / "lrlora_config.json", **{"config.rank_lr": "fast"}),
         "lrlora_config.json", "config: rank_lr must be a finite number, got 'fast'"),
        (lambda d: _edit_tensor(d / "adapter.safetensors", f"{QUERY}.hard_rank",
                                lambda t: t.fill_(4)),  # every layer at r_max: over budget
         "adapter.safetensors", None),
        (lambda d: _edit_tensor(d / "adapter.safetensors", f"{QUERY}.rho",
                                lambda t: t.fill_(float("nan"))),
         "adapter.safetensors", f"holds {QUERY}.rho with NaN"),
        (lambda d: (d / "adapter.safetensors").write_bytes(
            (d / "adapter.safetensors").read_bytes()[:-10]),
         "adapter.safetensors", "is not a complete safetensors file"),
    ],
)  # fmt: skip
def test_load_refuses_an_adapter_that_does_not_fit_naming_the_file(tmp_path, edit, file, message):
    """Another base model, an edited r_max, modules_to_save, reference rank, layer list or
    config value, ranks over the budget, a NaN, a truncated file: each is refused by name
    before the model changes (no shape error from torch, no base weight made trainable)."""
    path = _saved_adapter(tmp_path / "adapter")
    if edit is not None:
        edit(path)
    fresh = _wider_bert() if edit is None else tiny_bert()
    with pytest.raises(BadFileError) as caught:
        lrlora.load(fresh, path)
    assert caught.value.path == path / file and "load it into the base model" in str(caught.value)
    assert message is None or message in str(caught.value)
    if file == "lrlora_config.json" or edit is None:  # refused before inject changed anything
        assert not any(True for _ in lrlora.lora_layers(fresh))
        assert all(p.requires_grad for p in fresh.parameters())


def test_a_loaded_adapter_never_exceeds_its_budget(tmp_path):
    """Hard ranks edited up to r_max in the file are refused: the budget of the config holds."""
    path = _saved_adapter(tmp_path / "adapter")
    for name, _ in lrlora.lora_layers(lrlora.load(tiny_bert(), path)):
        _edit_tensor(path / "adapter.safetensors", f"{name}.hard_rank", lambda t: t.fill_(4))
    with pytest.raises(BadFileError, match="over the budget of 1792 its config gives"):
        lrlora.load(tiny_bert(), path)


def test_a_module_to_save_that_holds_a_target_is_refused():
    with pytest.raises(ValueError, match="holds the target .*query: its base weights would"):
        lrlora.inject(tiny_bert(), bert_config(modules_to_save=["bert.encoder.layer.0"]))


def test_save_directory_holds_no_pickles(tmp_path):
    model, optimizer, controller = _setup(bert_config(), 2)
    _steps(model, optimizer, controller, random_batches(2))
    lrlora.save(model, tmp_path / "a", controller=controller, optimizer=optimizer)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [
        "adapter.safetensors",
        "controller.json",
        "lrlora_config.json",
        "optimizer.json",
        "optimizer.safetensors",
    ]


def test_no_module_unpickles():
    """lrlora reads safetensors and JSON only: no module calls pickle, torch.load or
    numpy.load (the Trainer's own loaders are overridden in lrlora.app.trainer)."""
    source = Path(lrlora.__file__).parent
    calls = re.compile(r"import (pickle|joblib)|\bpickle\.|\b(torch|np|numpy)\.load\(")
    found = [f"{p.relative_to(source)}:{n}" for p in sorted(source.rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if calls.search(line)]  # fmt: skip
    assert found == []


def test_export_requires_a_stepped_controller(tmp_path):
    model = lrlora.inject(tiny_bert(), bert_config())
    with pytest.raises(lrlora.ControllerNotSteppedError, match="never stepped"):
        lrlora.export_peft(model, tmp_path / "peft")
    with pytest.raises(lrlora.ControllerNotSteppedError):
        lrlora.merge(model)


PEFT_LOAD = """
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoModelForCausalLM
from peft import PeftModel
base_dir, adapter_dir, tokens_file, out_file, kind = sys.argv[1:]
cls = AutoModelForSequenceClassification if kind == "seq" else AutoModelForCausalLM
model = PeftModel.from_pretrained(cls.from_pretrained(base_dir), adapter_dir).eval()
tokens = load_file(tokens_file)["tokens"]
with torch.no_grad():
    save_file({"logits": model(tokens).logits.contiguous()}, out_file)
assert "lrlora" not in sys.modules
"""


@pytest.mark.parametrize("kind", ["seq", "gpt2", "pruned"])
def test_export_loads_in_stock_peft_in_a_fresh_process(tmp_path, tokens, kind):
    """Also for the default, pruning, whose kept components change scaling when pruned."""
    from safetensors.torch import load_file, save_file

    pruned, kind = kind == "pruned", "seq" if kind == "pruned" else kind
    make = tiny_bert if kind == "seq" else tiny_gpt2
    make().save_pretrained(tmp_path / "base")
    batches = random_batches(6)
    probe = None
    if pruned:
        config = bert_config(r_max=4, budget_rank=2, rank_update="prune", harden_at=0.5)
        probe = lambda i: model(batches[i % 6][0], labels=batches[i % 6][1]).loss  # noqa: E731
    elif kind == "seq":
        config = bert_config(r_max=4, budget_rank=2)
    else:
        config = lrlora.LRLoRAConfig(
            target_modules=["c_attn", "c_proj", "c_fc"],
            r_max=4,
            budget_rank=2,
            rank_update="shared",
        )
    model = lrlora.inject(make(), config)
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=5e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=6, probe=probe)
    for tokens_, labels in batches:
        out = model(tokens_, labels=labels if kind == "seq" else tokens_)
        out.loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    if not pruned:  # one rank-0 layer to leave out (pruning leaves out its own)
        with torch.no_grad():
            lrlora.lora_layers(model).__next__()[1].rho.fill_(0.0)
    controller.harden()
    with torch.no_grad():
        expected = model(tokens).logits
        base_logits = make()(tokens).logits
    assert not torch.allclose(expected, base_logits, atol=1e-4)
    lrlora.export_peft(model, tmp_path / "peft")
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    zero = [name for name, rank in controller.hard_ranks().items() if rank == 0]
    assert (zero or pruned) and not set(zero) & set(peft_config["rank_pattern"])
    assert all(isinstance(r, int) and r > 0 for r in peft_config["rank_pattern"].values())
    save_file({"tokens": tokens}, str(tmp_path / "tokens.safetensors"))
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(PEFT_LOAD))
    subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "base"),
            str(tmp_path / "peft"),
            str(tmp_path / "tokens.safetensors"),
            str(tmp_path / "out.safetensors"),
            kind,
        ],
        check=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    got = load_file(str(tmp_path / "out.safetensors"))["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    merged = lrlora.merge(model)
    assert not any(True for _ in lrlora.lora_layers(merged))
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens).logits, expected, atol=1e-5, rtol=1e-4)
    assert any(True for _ in lrlora.lora_layers(model))  # merge() left the original alone
