"""The fast path is the same method: device-resident batches equal the conventional
pipeline's, and the compiled training step gives the eager step's loss, gradients and state."""
import copy
import shutil

import pytest
import torch

from allnc.config import load_config
from allnc.engine.loaders import build_train_loaders, choose_pipeline
from allnc.engine.trainer import Trainer
from allnc.methods.base import mixup

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "data.num_workers=0",
        "data.imbalance_factor=10", "data.augment=none"]


def test_fast_batches_equal_conventional_batches(tiny_learnable_fmnist, tmp_path):
    cfg = load_config("fmnist_lt_ce", [f"data.root={tiny_learnable_fmnist}", *FAST, "data.pipeline=fast"])
    t = Trainer(cfg, tmp_path / "r")
    conv_cfg = load_config("fmnist_lt_ce", [f"data.root={tiny_learnable_fmnist}", *FAST, "data.pipeline=conventional"])
    conv_choice = choose_pipeline(conv_cfg, t.bundle)
    assert t.choice.fast and not conv_choice.fast
    conv = build_train_loaders(conv_cfg, t.bundle, t.method.loaders, conv_choice, torch.device("cpu"))
    for ld in (*t.loaders, *conv):
        ld.set_epoch(3)
    n = 0
    for a, b in zip(t.loaders[0], conv[0]):
        assert torch.equal(a["index"].cpu(), b["index"]) and torch.equal(a["y"].cpu(), b["y"])
        assert torch.allclose(a["x"].cpu(), b["x"], atol=1e-6)  # uint8 -> normalized, both ways
        n += 1
    assert n == len(t.loaders[0]) == len(conv[0]) > 0


def close(a, b, rel=1e-4):
    """Equal up to float reordering: differences within ``rel`` of the tensor's largest entry."""
    return bool((a - b).abs().max() <= rel * a.abs().max() + 1e-7)


@pytest.mark.parametrize("config", ["fmnist_lt_ce", "fmnist_lt_allnc", "fmnist_lt_ldam_drw", "fmnist_lt_glmc",
                                    "fmnist_lt_paco"])
def test_compiled_step_equals_eager_step(config, tiny_learnable_fmnist, tmp_path):
    """torch.compile captures forward, losses (memory updates included), backward and the
    optimizer step; the aot_eager backend checks that capture on the CPU without generating
    kernels. Three steps with a changing learning rate: losses, gradients, updated weights,
    BN statistics and class-mean memories agree (GLMC: its per-step draws too, made outside the
    graph and fed to it as tensors; PaCo: its momentum encoder and queue of keys)."""
    cfg = load_config(config, [f"data.root={tiny_learnable_fmnist}", *FAST, "data.augment=standard",
                               "train.compile=on", "train.compile_backend=aot_eager"])
    t = Trainer(cfg, tmp_path / "r")
    assert t.stepper.step_fn is not t.stepper.step_module
    for ld in t.loaders:
        ld.set_epoch(0)
    t.method.on_epoch_start(5, 10)
    t.method.train()
    from allnc.methods.base import StepState

    steps = [list(b) for _, b in zip(range(3), zip(*t.loaders))]

    def one_step(fn, opt_step, i, batches):
        torch.manual_seed(100 + i)  # the same random draws on both sides (GLMC's lambda and box)
        t.stepper.set_lr(0.05 * (i + 1))  # the learning rate changes every step, as in warm-up
        loss, _ = fn(batches, StepState(5, 10, i, len(t.loaders[0])))
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in t.method.named_parameters() if p.grad is not None}
        opt_step()
        return loss.detach(), grads, copy.deepcopy(t.method.state_dict())

    # every step from the same state on both sides (float reordering must not compound)
    assert t.stepper.opt_step is not t.opt.step
    for i, batches in enumerate(steps):
        before = copy.deepcopy(t.method.state_dict()), copy.deepcopy(t.opt.state_dict())
        le, ge, s_eager = one_step(t.stepper.step_module, t.opt.step, i, batches)
        after = copy.deepcopy(t.opt.state_dict())
        t.method.load_state_dict(before[0])
        t.opt.load_state_dict(before[1])
        lc, gc, s_comp = one_step(t.stepper.step_fn, t.stepper.opt_step, i, batches)
        assert torch.allclose(le, lc, rtol=1e-5, atol=1e-6)
        assert ge.keys() == gc.keys() and len(ge) > 0
        for k in ge:
            assert close(ge[k], gc[k]), k
        for k in s_eager:  # weights, BN statistics, memories, queues and flags updated identically
            if s_eager[k].is_floating_point():
                assert close(s_eager[k], s_comp[k]), k
            else:
                assert torch.equal(s_eager[k], s_comp[k]), k
        t.method.load_state_dict(s_eager)
        t.opt.load_state_dict(after)


def test_per_view_augmentation_presets(tiny_learnable_fmnist, tmp_path):
    """BCL's three views: view 0 with data.augment, the two contrastive views with their own
    preset. With data.augment=none view 0 is the plain normalized image on both paths."""
    for pipeline in ("fast", "conventional"):
        cfg = load_config("fmnist_lt_bcl", [f"data.root={tiny_learnable_fmnist}", *FAST,
                                            f"data.pipeline={pipeline}", "method.bcl.view_augment=standard"])
        t = Trainer(cfg, tmp_path / pipeline)
        assert t.method.loaders[0].view_augments == ("none", "standard", "standard")
        ld = t.loaders[0]
        ld.set_epoch(0)
        b = next(iter(ld))
        x0, x1, x2 = (v.cpu() for v in b["x"])
        imgs = torch.as_tensor(t.bundle.train.images[b["index"].cpu().numpy()]).float().div(255)
        plain = (imgs.reshape(x0.shape) - t.bundle.mean[0]) / t.bundle.std[0]
        assert torch.allclose(x0, plain, atol=1e-5), pipeline
        assert not torch.allclose(x1, plain, atol=1e-3) and not torch.equal(x1, x2), pipeline


def _has_c_compiler() -> bool:
    return any(shutil.which(c) for c in ("cc", "gcc", "g++", "clang"))


@pytest.mark.skipif(not _has_c_compiler(), reason="inductor on the CPU needs a C/C++ compiler")
def test_mixup_compiles_under_inductor_with_the_eager_draws():
    """Mixup inside a step compiled by inductor (torch 2.11's inductor fails on
    x[torch.randperm(n)] in a graph): the compiled function runs and draws the same lambda and
    permutation as the eager one from the same seed."""
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 10
    torch.manual_seed(0)
    xe, ya_e, yb_e, lam_e = mixup(x, y, 1.0)
    torch._dynamo.reset()
    f = torch.compile(lambda x, y: mixup(x, y, 1.0), backend="inductor")
    torch.manual_seed(0)
    xc, ya_c, yb_c, lam_c = f(x, y)
    assert lam_c == lam_e and 0 < lam_e < 1
    assert torch.equal(ya_c, y) and torch.equal(yb_c, yb_e) and not torch.equal(yb_e, y)
    assert torch.allclose(xc, xe, atol=1e-6)
