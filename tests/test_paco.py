"""PaCo (Cui et al. ICCV 2021): its loss against the released code's formulas written out, the
cases it reduces to, its queue, one step of the method (momentum update, loss, enqueue), what
trains and what is saved, its bad settings and the released recipes in the dataset fragments."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allnc.config import load_config
from allnc.data.fast import mix_seed
from allnc.errors import ConfigError
from allnc.losses import KeyQueue, log_prior, logit_adjusted_ce, paco_loss
from allnc.methods.base import DataInfo, StepState, build_method

COUNTS = np.array([50, 30, 18, 11, 7, 4])


def make(*extra, config="fmnist_lt_paco"):
    cfg = load_config(config, ["model.width=8", *extra])
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(COUNTS, in_channels=1, image_hw=(28, 28)))


def unit(*shape, g):
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def released_loss(q, k, queue, y, queue_y, logits, counts, alpha, beta, gamma, t):
    """The released PaCoLoss step by step: candidates (q, k, queue) with labels (y, y,
    queue_y); class logits + log(prior + 1e-9); the max subtracted; the anchor's own column
    masked; positives beta * one-hot and alpha * same label; the denominator's samples
    weighted by gamma; the mean over positives of the log-probability."""
    b, c = logits.shape
    feats = torch.cat([q, k, queue])
    labels = torch.cat([y, y, queue_y])
    mask = (y[:, None] == labels[None, :]).double()
    prior = torch.as_tensor(counts / counts.sum(), dtype=torch.float64)
    scores = torch.cat([logits + torch.log(prior + 1e-9), q @ feats.T / t], 1)
    scores = scores - scores.max(1, keepdim=True).values.detach()
    own = torch.ones_like(mask)
    own[torch.arange(b), torch.arange(b)] = 0
    mask = torch.cat([beta * F.one_hot(y, c).double(), alpha * mask * own], 1)
    weights = torch.cat([torch.ones(b, c, dtype=torch.float64), gamma * own], 1)
    log_prob = scores - torch.log((scores.exp() * weights).sum(1, keepdim=True) + 1e-12)
    return (-(mask * log_prob).sum(1) / mask.sum(1)).mean()


@pytest.mark.parametrize("alpha,beta,gamma,t", [(0.01, 1.0, 1.0, 0.05), (0.3, 0.7, 0.5, 0.2), (1.0, 1.0, 2.0, 1.0)])
def test_loss_equals_the_released_formulas_written_out(alpha, beta, gamma, t):
    g = torch.Generator().manual_seed(0)
    b, n_queue, d, c = 7, 12, 5, len(COUNTS)
    q, k, queue = unit(b, d, g=g), unit(b, d, g=g), unit(n_queue, d, g=g)
    y, queue_y = torch.randint(0, c, (b,), generator=g), torch.randint(0, c, (n_queue,), generator=g)
    logits = torch.randn(b, c, generator=g, dtype=torch.float64)
    want = released_loss(q, k, queue, y, queue_y, logits, COUNTS, alpha, beta, gamma, t)
    # the released prior carries + 1e-9 inside its log; here the exact log prior
    got = paco_loss(q, y, logits, torch.cat([k, queue]), torch.cat([y, queue_y]), log_prior(COUNTS).double(),
                    alpha=alpha, beta=beta, gamma=gamma, temperature=t)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_without_its_sample_terms_the_loss_is_the_logit_adjusted_cross_entropy():
    g = torch.Generator().manual_seed(1)
    q, k = unit(9, 4, g=g), unit(30, 4, g=g)
    y, ky = torch.randint(0, 6, (9,), generator=g), torch.randint(0, 6, (30,), generator=g)
    z = torch.randn(9, 6, generator=g, dtype=torch.float64)
    lp = log_prior(COUNTS).double()
    for tau in (0.0, 1.0, 1.5):
        got = paco_loss(q, y, z, k, ky, lp, alpha=0.0, gamma=0.0, la_tau=tau)
        assert got.item() == pytest.approx(logit_adjusted_ce(z, y, lp, tau=tau).item(), rel=1e-6)  # that one in float32
    # alpha = 0 keeps the samples in the denominator: the loss is larger
    assert paco_loss(q, y, z, k, ky, lp, alpha=0.0, gamma=1.0) > logit_adjusted_ce(z, y, lp)


def test_empty_queue_slots_take_no_part_in_the_loss_or_its_gradient():
    g = torch.Generator().manual_seed(2)
    q0, k = unit(6, 4, g=g), unit(10, 4, g=g)
    y, ky = torch.randint(0, 6, (6,), generator=g), torch.randint(0, 6, (10,), generator=g)
    z = torch.randn(6, 6, generator=g, dtype=torch.float64)
    empty = unit(7, 4, g=g)
    lp = log_prior(COUNTS).double()
    grads = []
    for keys, labels in ((k, ky), (torch.cat([k[:4], empty, k[4:]]), torch.cat([ky[:4], torch.full((7,), -1), ky[4:]]))):
        q = q0.clone().requires_grad_(True)
        loss = paco_loss(q, y, z, keys, labels, lp, alpha=0.2, temperature=0.1)
        loss.backward()
        grads.append((loss.detach(), q.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


def test_the_queue_is_first_in_first_out_and_wraps_around():
    queue = KeyQueue(5, 2)
    assert (queue.labels == -1).all()  # empty at the start
    keys = torch.arange(16.0).view(8, 2)
    queue.enqueue(keys[:3], torch.tensor([0, 1, 2]))
    queue.enqueue(keys[3:6], torch.tensor([3, 4, 5]))  # slots 3, 4, then 0 again
    assert queue.labels.tolist() == [5, 1, 2, 3, 4] and int(queue.ptr) == 1
    assert torch.equal(queue.keys[0], keys[5]) and torch.equal(queue.keys[4], keys[4])
    queue.enqueue(keys, torch.arange(10, 18))  # more than it holds: the newest five, oldest first
    assert sorted(queue.labels.tolist()) == [13, 14, 15, 16, 17] and int(queue.ptr) == 1
    assert queue.labels[1:].tolist() + queue.labels[:1].tolist() == [13, 14, 15, 16, 17]


def batch(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": [torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)],
            "y": torch.randint(0, len(COUNTS), (n,), generator=g)}


def test_one_step_moves_the_key_encoder_computes_the_loss_with_it_and_enqueues_the_keys():
    m = make("method.paco.queue_size=16", "method.paco.momentum=0.9", "method.paco.alpha=0.5",
             "method.paco.temperature=0.2")
    m.train()
    assert all(torch.equal(pk, pq) for pk, pq in zip(m.key_parameters(), m.query_parameters()))  # a copy at the start
    with torch.no_grad():  # the query encoder moves on, the key encoder stays behind
        for p in m.query_parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.queue.enqueue(F.normalize(torch.randn(4, 32), dim=1), torch.tensor([0, 5, 5, 2]))
    old_key = [p.clone() for p in m.key_parameters()]
    old_keys, old_labels = m.queue.keys.clone(), m.queue.labels.clone()
    b = batch()
    loss, _ = m.training_loss([b], StepState(0, 10))

    for pk, old, pq in zip(m.key_parameters(), old_key, m.query_parameters()):
        assert torch.allclose(pk, 0.9 * old + 0.1 * pq, atol=1e-6)
    (v_q, v_k), y = b["x"], b["y"]
    with torch.no_grad():
        h = m.backbone(v_q)
        q = F.normalize(m.proj(h), dim=1)
        k = F.normalize(m.key_proj(m.key_backbone(v_k)), dim=1)  # the moved key encoder
        want = paco_loss(q, y, m.classifier(h), torch.cat([k, old_keys]), torch.cat([y, old_labels]),
                         log_prior(COUNTS), alpha=0.5, temperature=0.2)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # the batch's keys went in after the four earlier ones
    assert m.queue.labels[4:14].tolist() == y.tolist() and int(m.queue.ptr) == 14
    assert torch.allclose(m.queue.keys[4:14], k, atol=1e-6) and torch.equal(m.queue.keys[:4], old_keys[:4])


def test_only_the_query_encoder_and_classifier_learn_and_the_checkpoint_holds_everything():
    m = make()
    m.train()
    loss, _ = m.training_loss([batch()], StepState(0, 10))
    loss.backward()
    trained = {id(p) for grp in m.parameter_groups(5e-4) for p in grp["params"]}
    assert not trained & {id(p) for p in m.key_parameters()}
    assert all(p.grad is None for p in m.key_parameters())
    for mod in (m.backbone, m.proj, m.classifier):
        assert all(id(p) in trained for p in mod.parameters())
        assert sum(float(p.grad.abs().sum()) for p in mod.parameters()) > 0
    sd = m.state_dict()
    assert {"queue.keys", "queue.labels", "queue.ptr", "log_prior"} <= sd.keys()
    assert any(k.startswith("key_backbone.") for k in sd) and any(k.startswith("key_proj.") for k in sd)
    # predictions: the plain classifier on the query encoder's features
    m.eval()
    x = batch(seed=3)["x"][0]
    with torch.no_grad():
        assert torch.equal(m(x), m.classifier(m.backbone(x)))


def test_a_second_stage_starts_from_the_query_backbone_not_the_key_backbone():
    m = make()
    with torch.no_grad():
        for p in m.key_backbone.parameters():
            p.add_(1.0)
    ce = make(config="fmnist_lt_ce")
    ce.load_backbone_from(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ce.backbone.state_dict().values(), m.backbone.state_dict().values()))


@pytest.mark.parametrize("override,match", [
    ("method.hycon.enabled=true", "HyCon or P2P"),
    ("train.mixup=0.5", "whole labels"),
    ("method.paco.temperature=0", r"outside \(0, inf\)"),
    ("method.paco.queue_size=0", r"outside \[1, inf\)"),
    ("method.paco.momentum=1.5", r"outside \[0, 1\]"),
    ("method.paco.key_augment=blur", "key_augment"),
])
def test_bad_settings_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        make(override)


@pytest.mark.parametrize("name,want", [
    ("cifar100_lt_paco", {"model.name": "resnet32", "train.epochs": 400, "train.batch_size": 128, "train.lr": 0.05,
                          "train.weight_decay": 5e-4, "train.warmup_epochs": 10, "train.milestones": [320, 360],
                          "train.lr_decay": 0.1, "data.augment": "standard", "method.paco.alpha": 0.01,
                          "method.paco.temperature": 0.05, "method.paco.queue_size": 1024, "method.paco.proj_dim": 32,
                          "method.paco.momentum": 0.999, "method.paco.key_augment": "sim"}),
    ("cifar10_lt_paco_strong", {"train.epochs": 400, "data.augment": "strong", "data.cutout": 16}),
    ("imagenet_lt_paco", {"train.epochs": 400, "train.batch_size": 128, "train.lr": 0.02, "train.schedule": "cosine",
                          "train.weight_decay": 5e-4, "method.paco.alpha": 0.05, "method.paco.temperature": 0.2,
                          "method.paco.queue_size": 8192, "method.paco.proj_dim": 128}),
    ("inat2018_paco", {"train.weight_decay": 1e-4, "train.lr": 0.02, "method.paco.queue_size": 8192}),
    ("places_lt_paco", {"model.name": "resnet152", "model.pretrained": "resnet152-394f9c45.pth",
                        "model.frozen": "convs_but_last_block", "train.epochs": 30, "train.batch_size": 128,
                        "train.lr": 0.02, "train.warmup_epochs": 5, "train.schedule": "cosine",
                        "train.weight_decay": 5e-4, "method.paco.alpha": 0.05, "method.paco.beta": 1.0,
                        "method.paco.gamma": 1.0, "method.paco.temperature": 0.2, "method.paco.queue_size": 8192,
                        "method.paco.proj_dim": 128, "method.paco.proj_hidden": 0, "method.paco.momentum": 0.999,
                        "method.paco.query_augment": "sim", "method.paco.key_augment": "sim"}),
])
def test_the_released_recipes_are_in_the_dataset_fragments(name, want):
    cfg = load_config(name)
    for key, value in want.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert (list(node) if key.endswith("milestones") else node) == value, key


# ---------------------------------------------------------------- shuffling BN under torchrun
def _keys_problem():
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 1, 28, 28, generator=g)  # the global batch of second views: 4 per rank


def _shuffle_worker(rank, init_file, out_dir, extra):
    import datetime

    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                             timeout=datetime.timedelta(seconds=60))
    try:
        m = make("seed=3", *extra)
        m.train()
        k = m.encode_keys(_keys_problem()[rank * 4:(rank + 1) * 4], StepState(2, 10, 7, 20))
        torch.save(k, f"{out_dir}/keys{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _two_ranks(tmp_path, *extra):
    import time

    import torch.multiprocessing as mp

    tmp_path.mkdir()
    ctx = mp.spawn(_shuffle_worker, args=(str(tmp_path / "init"), str(tmp_path), list(extra)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        assert time.monotonic() < deadline, "the two-process run did not finish in 120 s"
    return torch.cat([torch.load(tmp_path / "keys0.pt"), torch.load(tmp_path / "keys1.pt")])


def test_under_two_ranks_each_key_is_computed_in_a_shuffled_batch_and_returned_in_order(tmp_path):
    got = _two_ranks(tmp_path / "shuffled")
    x = _keys_problem()
    m = make("seed=3")
    m.train()
    enc = lambda v: m.key_proj(m.key_backbone(v))  # noqa: E731
    # the definition: the global batch permuted (seed 3, epoch 2, step 7), each rank's half of
    # it through the key encoder as one batch, the outputs put back in the global order
    g = torch.Generator().manual_seed(mix_seed(3, 2, 7))
    perm = torch.randperm(8, generator=g)
    with torch.no_grad():
        out = torch.cat([enc(x[perm[:4]]), enc(x[perm[4:]])])
        want = out[torch.argsort(perm)]
        unshuffled = torch.cat([enc(x[:4]), enc(x[4:])])
    assert torch.allclose(got, want, atol=1e-5)
    # and the shuffle mattered: the batch norm saw other batches than the queries' own
    assert not torch.allclose(got, unshuffled, atol=1e-3)
    # shuffle_bn=false: each rank's keys from its own images
    plain = _two_ranks(tmp_path / "plain", "method.paco.shuffle_bn=false")
    assert torch.allclose(plain, unshuffled, atol=1e-5)


def test_in_one_process_the_keys_are_the_key_encoders_output():
    m = make()
    m.train()
    x = _keys_problem()
    with torch.no_grad():
        want = m.key_proj(m.key_backbone(x))
        assert torch.equal(m.encode_keys(x, StepState(0, 1, 0, 1)), want)
