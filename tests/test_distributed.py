"""DESIGN property 8: under data-parallel training every process holds the same rho, tau
and allowance, and the result matches one process that sees the same global batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import lrlora
from tiny import bert_config, random_batches, tiny_bert

STEPS, GLOBAL_BATCH = 6, 4


def _batches():
    return random_batches(STEPS, GLOBAL_BATCH)


def _train(model, forward, shard):
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(model, optimizer, total_steps=STEPS)
    for tokens, labels in _batches():
        forward(tokens[shard], labels=labels[shard]).loss.backward()
        optimizer.step()
        controller.step()
        optimizer.zero_grad()
    rhos = torch.stack([layer.rho.detach() for _, layer in lrlora.lora_layers(model)])
    return rhos, torch.tensor([controller.tau, controller.allowance], dtype=torch.float64)


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = lrlora.inject(tiny_bert(), bert_config(init_rank=3, rank_lr=0.2, rebalance_every=2))
    ddp = DistributedDataParallel(model)
    per = GLOBAL_BATCH // world
    rhos, schedule = _train(model, ddp, slice(rank * per, (rank + 1) * per))
    torch.save({"rho": rhos, "schedule": schedule}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_matches_single_process_and_processes_agree(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(results[0]["rho"], results[1]["rho"])
    assert torch.equal(results[0]["schedule"], results[1]["schedule"])

    single = lrlora.inject(tiny_bert(), bert_config(init_rank=3, rank_lr=0.2, rebalance_every=2))
    rhos, schedule = _train(single, single, slice(None))
    torch.testing.assert_close(results[0]["rho"], rhos, atol=1e-4, rtol=0)
    torch.testing.assert_close(results[0]["schedule"], schedule)
    assert not torch.allclose(rhos, torch.full_like(rhos, 3.0))  # the ranks did move


def _prune_worker(rank, world, init_file, out_dir):
    """Every process probes its own rows, so its measured values differ; the summed values
    must make every process keep the same components."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    config = bert_config(rank_update="prune", harden_at=0.5)
    model = lrlora.inject(tiny_bert(), config)
    ddp = DistributedDataParallel(model)
    probes = random_batches(lrlora.RankController.PROBE_BATCHES, 2, seed=10 + rank)
    optimizer = torch.optim.AdamW(lrlora.optimizer_groups(model, lr=1e-2))
    controller = lrlora.RankController(
        model,
        optimizer,
        total_steps=STEPS,
        probe=lambda i: model(probes[i][0], labels=probes[i][1]).loss,
    )
    per = GLOBAL_BATCH // world
    for tokens, labels in _batches():
        shard = slice(rank * per, (rank + 1) * per)
        ddp(tokens[shard], labels=labels[shard]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    ranks = torch.tensor(list(controller.hard_ranks().values()))
    torch.save({"ranks": ranks}, f"{out_dir}/prune{rank}.pt")
    dist.destroy_process_group()


def test_pruning_processes_keep_the_same_components(tmp_path):
    mp.spawn(_prune_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"prune{r}.pt", weights_only=True)["ranks"] for r in range(2)]
    assert torch.equal(ranks[0], ranks[1])
    assert int(ranks[0].sum()) > 0
