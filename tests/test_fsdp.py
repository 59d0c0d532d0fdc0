"""FSDP2 (``fully_shard``, gloo on CPU) and DESIGN property 8 under torch.distributed: the
sharded run matches one process, rho/tau/allowance agree everywhere, and a disagreement
is caught."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lrlora
from tiny import bert_config, random_batches, tiny_bert

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("FSDP2 (fully_shard) needs torch >= 2.6", allow_module_level=True)

STEPS, GLOBAL_BATCH = 6, 4


def _batches():
    return random_batches(STEPS, GLOBAL_BATCH)


def _model():
    config = bert_config(init_rank=3, rank_lr=0.2, rebalance_every=0)  # FSDP2: no re-balancing
    return lrlora.inject(tiny_bert(), config)


def _train(model, shard):
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=STEPS)
    for tokens, labels in _batches():
        model(tokens[shard], labels=labels[shard]).loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    return controller


def _init(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)


def _fsdp_worker(rank, world, init_file, out_dir):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    _init(rank, world, init_file)
    model = _model()
    rhos = {layer.rho for _, layer in lrlora.lora_layers(model)}  # 0-dim: FSDP2 cannot shard
    for block in model.bert.encoder.layer:
        fsdp.fully_shard(block, ignored_params=rhos)
    fsdp.fully_shard(model, ignored_params=rhos)
    per = GLOBAL_BATCH // world
    controller = _train(model, slice(rank * per, (rank + 1) * per))
    with pytest.raises(NotImplementedError, match="FSDP2 shards"):
        controller.harden()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # every process takes part
    if rank == 0:  # harden and export an unsharded copy
        copy = _model()
        copy.load_state_dict(state)
        twin = lrlora.RankController(copy, total_steps=STEPS)
        twin.load_state_dict(controller.state_dict())
        result = {
            "rho": controller._rhos(),
            "soft": torch.tensor(list(controller.soft_ranks().values())),  # readable sharded
            "hard": torch.tensor(list(twin.harden().values())),
        }
        torch.save(result, f"{out_dir}/fsdp.pt")
    dist.destroy_process_group()


def test_fsdp2_matches_one_process_and_hardens_a_gathered_copy(tmp_path):
    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    sharded = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    single = _train(_model(), slice(None))
    torch.testing.assert_close(sharded["rho"], single._rhos(), atol=1e-4, rtol=0)
    soft = torch.tensor(list(single.soft_ranks().values()))
    torch.testing.assert_close(sharded["soft"], soft, atol=1e-3, rtol=0)
    assert not torch.allclose(sharded["rho"], torch.full_like(sharded["rho"], 3.0))  # moved
    assert sharded["hard"].tolist() == list(single.harden().values())


def _mismatch_worker(rank, world, init_file, out_dir):
    _init(rank, world, init_file)
    torch.manual_seed(0)
    model = lrlora.inject(
        nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)),
        lrlora.LRLoRAConfig(
            target_modules=["0", "1"], r_max=4, budget_rank=2, rank_update="shared"
        ),  # fmt: skip
    )
    controller = lrlora.RankController(model, total_steps=4)
    controller.step()  # identical everywhere: passes
    if rank == 1:  # what a rho left out of the gradient all-reduce would do
        with torch.no_grad():
            controller.layers[1].rho.add_(0.25)
    try:
        controller.step()
        message = "no error"
    except lrlora.ReplicaMismatchError as err:
        message = str(err)
    with open(f"{out_dir}/mismatch{rank}.txt", "w") as f:
        f.write(message)
    dist.destroy_process_group()


def test_processes_that_disagree_on_rho_are_caught(tmp_path):
    mp.spawn(_mismatch_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        message = (tmp_path / f"mismatch{rank}.txt").read_text()
        assert "processes disagree at controller step 2 on [" in message and "'1'" in message
