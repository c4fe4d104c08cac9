"""Backbones, heads and the two-branch network (allnc.models)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from allnc.config import default_config
from allnc.errors import ConfigError
from allnc.models import (
    BACKBONES,
    CLASSIFIERS,
    BranchedNet,
    ShortcutA,
    build_backbone,
    build_classifier,
    count_parameters,
    resnet32,
    resnet_small,
    simplex_etf,
)
from allnc.models.resnet_cifar import BasicBlock


def _cfg(**model):
    cfg = default_config()
    for k, v in model.items():
        cfg.model[k] = v
    return cfg.model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------- backbones
def test_registries_hold_every_name():
    assert BACKBONES.names() == ["resnet152", "resnet32", "resnet50", "resnet_small", "resnext50"]
    assert CLASSIFIERS.names() == ["etf", "linear", "normed"]
    with pytest.raises(ConfigError, match="did you mean 'resnet32'"):
        build_backbone(_cfg(name="resnet23"), 3)


def test_resnet32_parameter_count_is_the_known_figure():
    bb = build_backbone(_cfg(name="resnet32", width=16), 3)
    head = build_classifier("linear", bb.out_dim, 10)
    # Hand count: conv1 432 + bn 32; stage1 5*(2*2304+64); stage2 13952 + 4*18560;
    # stage3 55552 + 4*73984; fc 64*10+10 -> 464,154, the known ResNet-32 figure.
    assert count_parameters(bb) == 463_504
    assert count_parameters(bb) + count_parameters(head) == 464_154
    assert bb.out_dim == 64
    assert bb(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_option_a_shortcut_has_no_parameters_and_pads_zeros():
    sc = ShortcutA(16, 32, 2)
    assert count_parameters(sc) == 0
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0
    # A downsampling block has exactly the parameters of its two convs and two BNs.
    blk = BasicBlock(16, 32, 2)
    assert isinstance(blk.shortcut, ShortcutA)
    assert count_parameters(blk) == 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32


def test_width_scales_features_and_in_channels_option():
    bb = build_backbone(_cfg(name="resnet32", width=32), 3)
    assert bb.out_dim == 128
    assert bb(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    small = build_backbone(_cfg(name="resnet_small", width=8), 1)
    assert small.out_dim == 32
    assert small(torch.randn(3, 1, 28, 28)).shape == (3, 32)
    assert len(resnet_small(blocks=2).stages()[0]) == 2
    assert len(resnet_small(blocks=(1, 2, 3)).stages()[2]) == 3


def test_stem_stride_two_is_the_stride_one_network_subsampled_after_its_stem():
    """``model.stem_stride=2``: the same parameters; the stem's output is the stride-1 stem's
    output at every second row and column, and every stage then runs at that resolution."""
    one = build_backbone(_cfg(name="resnet_small", width=8), 1)
    two = build_backbone(_cfg(name="resnet_small", width=8, stem_stride=2), 1)
    assert two.stem_stride == 2 and count_parameters(two) == count_parameters(one)
    two.load_state_dict(one.state_dict())  # same keys and shapes: strict load succeeds
    one.train()
    with torch.no_grad():
        one(torch.randn(16, 1, 28, 28) * 2 + 1)  # non-trivial BN statistics
    two.load_state_dict(one.state_dict())
    one.eval(), two.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        h = one.conv1(x)[:, :, ::2, ::2]
        h = one.relu(one.bn1(h))
        for stage in one.stages():
            h = stage(h)
        assert h.shape[-2:] == (4, 4)  # 28 -> 14 -> 7 -> 4
        assert torch.allclose(two(x), one.pool(h), atol=1e-6)
        assert not torch.allclose(two(x), one(x), atol=1e-3)
    with pytest.raises(ConfigError, match="stem_stride=3 must be 1 or 2"):
        build_backbone(_cfg(name="resnet_small", stem_stride=3), 1)
    with pytest.raises(ConfigError, match="stem_stride applies to resnet32 and resnet_small only"):
        build_backbone(_cfg(name="resnet50", stem_stride=2), 3)


def test_kaiming_init_as_ldam():
    bb = resnet32()
    w = bb.stages()[2][3].conv1.weight  # 64 x 64 x 3 x 3, fan-in 576
    assert abs(w.std().item() / math.sqrt(2 / 576) - 1) < 0.05
    assert torch.equal(bb.bn1.weight, torch.ones(16)) and torch.equal(bb.bn1.bias, torch.zeros(16))


@pytest.mark.parametrize("mode", ["last_block", "last_stage"])
@pytest.mark.parametrize(
    "make,shape",
    [(lambda: resnet32(), (3, 3, 32, 32)), (lambda: resnet_small(in_channels=1), (3, 1, 28, 28))],
)
def test_split_reproduces_forward_exactly(make, shape, mode):
    bb = make()
    # A "trained" backbone: non-trivial BN statistics, then eval mode.
    bb.train()
    with torch.no_grad():
        bb(torch.randn(*shape) * 2 + 1)
    bb.eval()
    trunk, branch = bb.split(mode)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(branch(trunk(x)), bb(x))
    # Shared parameters, not copies: every split parameter is one of the backbone's.
    own = {id(p) for p in bb.parameters()}
    split_params = list(trunk.parameters()) + list(branch.parameters())
    assert {id(p) for p in split_params} == own
    with torch.no_grad():
        bb.stages()[-1][-1].conv2.weight.mul_(2.0)
        assert torch.equal(branch(trunk(x)), bb(x))


def test_split_last_block_vs_last_stage_sizes():
    bb = resnet32()
    _, b_block = bb.split("last_block")
    _, b_stage = bb.split("last_stage")
    assert count_parameters(b_block) == 2 * 64 * 64 * 9 + 4 * 64
    assert count_parameters(b_stage) == 351_488
    with pytest.raises(ConfigError, match="last_block"):
        bb.split("last_layer")


def test_resnet50_features_and_split():
    bb = build_backbone(_cfg(name="resnet50"), 3).eval()
    assert bb.out_dim == 2048
    assert count_parameters(bb) == 23_508_032  # torchvision resnet50 minus its fc
    x = torch.randn(2, 3, 64, 64)
    trunk, branch = bb.split("last_block")
    with torch.no_grad():
        f = bb(x)
        assert f.shape == (2, 2048)
        assert torch.equal(branch(trunk(x)), f)


# ------------------------------------------------------------------------ pretrained
def test_pretrained_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_backbone(_cfg(name="resnet32", pretrained=str(tmp_path / "nope.pt")), 3)


def test_pretrained_local_state_dict_round_trip(tmp_path):
    src = resnet32()
    head = nn.Linear(64, 10)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd.update({f"module.linear.{k}": v for k, v in head.state_dict().items()})
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": sd}, path)
    bb = build_backbone(_cfg(name="resnet32", pretrained=str(path)), 3)
    for k, v in src.state_dict().items():
        assert torch.equal(bb.state_dict()[k], v), k
    # Strict: a checkpoint of another architecture is refused with a clear message.
    torch.save(resnet_small(in_channels=3).state_dict(), tmp_path / "small.pt")
    with pytest.raises(ConfigError, match="does not match"):
        build_backbone(_cfg(name="resnet32", pretrained=str(tmp_path / "small.pt")), 3)
    torch.save(resnet32(width=8).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(ConfigError, match="wrong shape"):
        build_backbone(_cfg(name="resnet32", pretrained=str(tmp_path / "narrow.pt")), 3)


def test_resnet152_takes_a_torchvision_checkpoints_keys():
    from torchvision.models import resnet152 as tv_resnet152

    ours = build_backbone(_cfg(name="resnet152"), 3)
    theirs = tv_resnet152(weights=None).state_dict()
    want = {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == want and ours.out_dim == 2048


def test_frozen_convs_learn_only_in_the_last_block():
    bb = build_backbone(_cfg(name="resnet32", frozen="convs_but_last_block"), 3)
    last = bb.stages()[-1][-1]
    in_last = {id(p) for p in last.parameters()}
    convs = [m for m in bb.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.requires_grad == (id(m.weight) in in_last) for m in convs)
    assert sum(m.weight.requires_grad for m in convs) == 2  # the last BasicBlock's two convolutions
    bns = [p for m in bb.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert bns and all(p.requires_grad for p in bns)
    # one SGD step over the trainable parameters: exactly those move
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=0.1)
    bb(torch.randn(4, 3, 32, 32)).pow(2).sum().backward()
    opt.step()
    moved = {k for k, v in bb.state_dict().items() if not torch.equal(v, before[k]) and "running" not in k
             and "num_batches" not in k}
    conv_keys = {f"{n}.weight" for n, m in bb.named_modules() if isinstance(m, nn.Conv2d)}
    assert moved & conv_keys == {k for k in conv_keys if k.startswith("layers.2.4.")}  # the last stage's fifth block
    assert any(k.startswith("bn") or ".bn" in k for k in moved)
    with pytest.raises(ConfigError, match="model.frozen"):
        build_backbone(_cfg(name="resnet32", frozen="all"), 3)


def _pretrained_file(tmp_path, width=8):
    """A resnet32's state_dict with BN statistics and affine maps away from their defaults."""
    src = resnet32(width=width)
    g = torch.Generator().manual_seed(3)
    for m in src.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    path = tmp_path / "pre.pt"
    torch.save(src.state_dict(), path)
    return src, path


def test_a_fixed_trunk_computes_what_the_loaded_network_computes_in_eval_mode(tmp_path):
    src, path = _pretrained_file(tmp_path)
    bb = build_backbone(_cfg(name="resnet32", width=8, pretrained=str(path), frozen="all_but_last_block"), 3)
    last = bb.stages()[-1][-1]
    # only the last block learns: its parameters are the only ones left
    assert {id(p) for p in bb.parameters() if p.requires_grad} == {id(p) for p in last.parameters()}
    n_last = sum(p.numel() for p in last.parameters())
    assert count_parameters(bb, trainable_only=True) == n_last > 0
    # the trunk's batch norms are fixed maps, the last block's are batch norms still
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bb.modules()) == 2
    # in training mode the trunk normalises with the loaded statistics: it equals the source
    # network's trunk in eval mode, and a forward pass moves none of its buffers
    trunk, _ = bb.split("last_block")
    src_trunk, _ = src.split("last_block")
    x = torch.randn(6, 3, 32, 32)
    bb.train(), src.eval()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with torch.no_grad():
        a, b = trunk(x), src_trunk(x)
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()  # equal up to float rounding
        bb(x)
    moved = {k for k, v in bb.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("layers.2.4.") for k in moved)  # the last block's BN statistics
    # one SGD step moves the last block's weights only
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    bb(x).pow(2).sum().backward()
    opt.step()
    assert {n for n, p in bb.named_parameters() if not torch.equal(p, before[n])} == \
        {n for n in before if n.startswith("layers.2.4.")}


def test_a_fresh_last_block_leaves_the_loaded_trunk_and_starts_with_torch_defaults(tmp_path):
    src, path = _pretrained_file(tmp_path, width=16)
    bb = build_backbone(_cfg(name="resnet32", pretrained=str(path), fresh_last_block=True), 3)
    theirs = src.state_dict()
    for k, v in bb.state_dict().items():
        if not k.startswith("layers.2.4."):
            assert torch.equal(v, theirs[k]), k
    last = bb.stages()[-1][-1]
    for m in last.modules():
        if isinstance(m, nn.Conv2d):
            # PyTorch's own init, uniform within 1/sqrt(fan_in), where the backbone's Kaiming-normal
            # init reaches beyond it (a 3x3x64 convolution: sqrt(2/576) * 3 sigma vs 1/24)
            bound = 1 / math.sqrt(m.weight[0].numel())
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


# --------------------------------------------------------------------------- heads
@pytest.mark.parametrize("K,d", [(10, 64), (10, 9), (100, 128), (2, 1)])
def test_etf_is_a_simplex_etf(K, d):
    head = build_classifier("etf", d, K, etf_seed=3)
    W = head.weight
    assert W.shape == (K, d) and head.bias is None
    W64 = W.double()
    assert torch.allclose(W64.norm(dim=1), torch.ones(K, dtype=torch.float64), atol=1e-6)
    G = W64 @ W64.t()
    off = G[~torch.eye(K, dtype=torch.bool)]
    assert (off + 1.0 / (K - 1)).abs().max().item() < 1e-6


def test_etf_seeded_fixed_and_saved(tmp_path):
    a = build_classifier("etf", 64, 10, etf_seed=0)
    b = build_classifier("etf", 64, 10, etf_seed=0)
    c = build_classifier("etf", 64, 10, etf_seed=1)
    assert torch.equal(a.weight, b.weight)
    assert not torch.allclose(a.weight, c.weight)
    assert "weight" in a.state_dict() and count_parameters(a) == 0
    assert not a.weight.requires_grad
    h = torch.randn(4, 64, requires_grad=True)
    a(h).sum().backward()
    assert a.weight.grad is None and h.grad is not None
    torch.save(a.state_dict(), tmp_path / "etf.pt")
    c.load_state_dict(torch.load(tmp_path / "etf.pt", weights_only=True))
    assert torch.equal(c.weight, a.weight)


def test_etf_too_small_dimension_raises():
    # CIFAR-100 on a 64-d ResNet-32: 99 dims needed, width 16 * 99 / 64 -> 25.
    with pytest.raises(ConfigError) as e:
        build_classifier("etf", 64, 100, width=16)
    assert "model.width to at least 25" in str(e.value) and "K-1 = 99" in str(e.value)
    with pytest.raises(ConfigError, match="model.width"):
        simplex_etf(11, 9)
    assert simplex_etf(10, 9).shape == (10, 9)  # d = K-1 is enough


def test_normed_classifier_is_the_cosine():
    head = build_classifier("normed", 16, 5, bias=True)
    assert head.bias is None and head.weight.shape == (5, 16)
    with torch.no_grad():
        head.weight.mul_(torch.rand(5, 1) * 3 + 0.1)  # rows of any length
    h = torch.randn(7, 16) * 5
    out = head(h)
    assert out.abs().max().item() <= 1 + 1e-6
    by_hand = torch.stack([torch.stack([torch.dot(hi, w) / (hi.norm() * w.norm()) for w in head.weight]) for hi in h])
    assert torch.allclose(out, by_hand, atol=1e-6)


def test_linear_classifier_bias_option():
    with_b = build_classifier("linear", 64, 10, bias=True)
    no_b = build_classifier("linear", 64, 10, bias=False)
    assert with_b.weight.shape == (10, 64) and with_b.bias.shape == (10,)
    assert no_b.bias is None
    with pytest.raises(ConfigError, match="did you mean 'normed'"):
        build_classifier("norme", 64, 10)


# ---------------------------------------------------------------------- two branches
def test_branched_net_inference_mix_and_branches():
    net = BranchedNet(resnet32(), mode="last_block").eval()
    assert net.out_dim == 64 and net.feature_dim == 128
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        mixed = net.inference_features(x)
        expect = torch.cat([0.5 * net.features_c(x), 0.5 * net.features_r(x)], dim=1)
        assert mixed.shape == (3, 128)
        assert torch.equal(mixed, expect)
        assert not torch.allclose(net.features_c(x), net.features_r(x))
    head = build_classifier("linear", net.feature_dim, 10)
    assert head(mixed).shape == (3, 10)


def test_branch_r_is_a_fresh_copy_or_shared():
    bb = resnet32()
    n_bb = count_parameters(bb)
    net = BranchedNet(bb, mode="last_block")
    block = 2 * 64 * 64 * 9 + 4 * 64
    assert count_parameters(net) == n_bb + block
    pc = dict(net.branch_c.named_parameters())
    pr = dict(net.branch_r.named_parameters())
    assert pc.keys() == pr.keys()
    assert all(pc[k] is not pr[k] for k in pc)
    assert not torch.equal(pc["0.conv1.weight"], pr["0.conv1.weight"])
    # Branch c and the trunk are the backbone's own modules: a trained backbone is reused.
    assert net.branch_c[0] is bb.stages()[-1][-1]
    shared = BranchedNet(resnet32(), mode="last_stage", share_branch=True)
    assert shared.branch_r is shared.branch_c
    assert count_parameters(shared) == n_bb


def test_forward_both_joint_trunk_matches_separate_passes_in_eval():
    net = BranchedNet(resnet32(), mode="last_stage").eval()
    xu, xr = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hc, hr = net.forward_both(xu, xr)
        assert hc.shape == (4, 64) and hr.shape == (2, 64)
        assert torch.allclose(hc, net.features_c(xu), atol=1e-5)
        assert torch.allclose(hr, net.features_r(xr), atol=1e-5)


def test_forward_both_joint_trunk_bn_sees_both_batches():
    torch.manual_seed(1)
    xu, xr = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32) * 3 + 2
    joint = BranchedNet(resnet32(), joint_trunk=True).train()
    sep = BranchedNet(resnet32(), joint_trunk=False).train()
    sep.load_state_dict(joint.state_dict())
    hc_j, _ = joint.forward_both(xu, xr)
    hc_s, _ = sep.forward_both(xu, xr)
    # Train-mode BN in the trunk: joint statistics differ from per-batch statistics.
    assert not torch.allclose(hc_j, hc_s, atol=1e-4)
    # And the joint pass is exactly one trunk pass on the concatenation.
    j2 = BranchedNet(resnet32(), joint_trunk=True).train()
    j2.load_state_dict(joint.state_dict())
    t = j2.trunk(torch.cat([xu, xr]))
    assert torch.allclose(hc_j, j2.branch_c(t[:4]), atol=1e-6)
