"""ClassMeanMemory under data parallel training: two CPU processes (gloo), each with half of
a fixed batch, must end with identical memory equal to one process that saw the whole batch,
and a loss computed from the mixed batch means must get the single-process gradient once the
gradients are averaged over ranks as DistributedDataParallel does."""
import datetime
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from allnc.losses import ClassMeanMemory, P2PLoss

K, D_IN, D, WORLD = 5, 4, 3, 2


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, D_IN, generator=g)
    # rank 0 gets samples 0-3, rank 1 samples 4-7: class 0 only on rank 0, class 4 only on
    # rank 1, classes 1 and 2 on both, class 3 nowhere
    y = torch.tensor([0, 0, 1, 2, 2, 2, 4, 1])
    P = torch.randn(D_IN, D, generator=g)
    W = torch.randn(K, D, generator=g)
    state = {
        "means": torch.randn(K, D, generator=g),
        "seen": torch.tensor([True, False, True, True, False]),
    }
    return x, y, P, W, state


def _step(x, y, P, W, state):
    """One step: a P2P loss from the mixed batch means, backward, then the memory update."""
    mem = ClassMeanMemory(K, D, momentum=0.9)
    mem.load_state_dict(state)
    P = P.clone().requires_grad_(True)
    feats = x @ P
    stats = mem.batch_stats(feats, y)
    means, present = mem.mix(*stats)
    loss = P2PLoss(tau=0.5)(means, W, valid=mem.seen | present)
    loss.backward()
    mem.update_from_stats(*stats)
    return {
        "loss": loss.detach(),
        "grad": P.grad.clone(),
        "means_batch": means.detach(),
        "present": present,
        "memory": mem.means.clone(),
        "seen": mem.seen.clone(),
    }


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        x, y, P, W, state = _problem()
        half = slice(rank * 4, (rank + 1) * 4)
        out = _step(x[half], y[half], P, W, state)
        # what DistributedDataParallel does to parameter gradients: sum over ranks / world
        dist.all_reduce(out["grad"], op=dist.ReduceOp.SUM)
        out["grad"] /= WORLD
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    ctx = mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            raise AssertionError("the two-process run did not finish in 120 s")
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")

    x, y, P, W, state = _problem()
    single = _step(x, y, P, W, state)

    # every rank holds the same memory, bit for bit
    assert torch.equal(r0["memory"], r1["memory"]) and torch.equal(r0["seen"], r1["seen"])
    # ... equal to one process that saw the whole batch
    assert torch.allclose(r0["memory"], single["memory"], atol=1e-6)
    assert torch.equal(r0["seen"], single["seen"])
    assert r0["present"].tolist() == [True, True, True, False, True] == single["present"].tolist()
    assert torch.allclose(r0["means_batch"], single["means_batch"], atol=1e-6)
    assert torch.allclose(r1["means_batch"], single["means_batch"], atol=1e-6)
    # absent class 3 kept its memory; class 4 (rank 1 only, unseen) was set to its mean
    assert torch.equal(r0["memory"][3], state["means"][3])
    assert torch.allclose(r0["memory"][4], (x[6] @ P), atol=1e-6)
    # the loss is the same on both ranks, and so is the DDP-averaged gradient ...
    assert torch.allclose(r0["loss"], single["loss"], atol=1e-6)
    assert torch.allclose(r1["loss"], single["loss"], atol=1e-6)
    assert torch.equal(r0["grad"], r1["grad"])
    # ... which equals the single-process gradient
    assert single["grad"].abs().sum() > 0
    assert torch.allclose(r0["grad"], single["grad"], atol=1e-5, rtol=1e-4)
