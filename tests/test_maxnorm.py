"""Weight balancing's second stage, MaxNorm + weight decay: the radius from the first stage's
row norms, the projection, the released class-balanced loss, and the stage through the engine
(what it may change, when it projects, and that its radius survives in the checkpoint)."""
import pytest
import torch
import torch.nn.functional as F

from allnc.config import load_config
from allnc.engine.checkpoint import load_checkpoint
from allnc.engine.trainer import Trainer
from allnc.errors import ConfigError
from allnc.losses import cb_softmax_bce, drw_weights, maxnorm_project_, maxnorm_threshold
import allnc.methods.maxnorm as maxnorm_mod

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "data.num_workers=0"]
ROWS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])  # row norms 1, 2, 5


@pytest.mark.parametrize("thresh,radius", [(0.0, 1.0), (0.1, 1.4), (0.5, 3.0), (1.0, 5.0)])
def test_the_radius_lies_between_the_shortest_and_the_longest_row(thresh, radius):
    assert float(maxnorm_threshold(ROWS, thresh)) == pytest.approx(radius)


def test_a_threshold_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        maxnorm_threshold(ROWS, 1.5)


def test_projection_shortens_only_the_rows_beyond_the_radius_and_keeps_their_direction():
    w = ROWS.clone()
    maxnorm_project_(w, torch.tensor(1.4))
    assert torch.equal(w[0], ROWS[0])  # norm 1: inside, untouched
    assert torch.linalg.vector_norm(w[1:], dim=1).tolist() == pytest.approx([1.4, 1.4])
    assert F.cosine_similarity(w[1:], ROWS[1:]).tolist() == pytest.approx([1.0, 1.0])
    again = w.clone()
    maxnorm_project_(again, torch.tensor(1.4))
    assert torch.allclose(again, w)  # a projection: twice is once


def test_the_class_balanced_loss_is_the_released_weighted_bce_of_the_softmax():
    counts = [500, 60, 7]
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(8, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0, 2, 1])
    w = drw_weights(counts, 0.9999)
    p = torch.softmax(z, 1)
    # written out entry by entry: w_{y_i} * -(t log p + (1 - t) log(1 - p)), mean over i and k
    total = 0.0
    for i in range(8):
        for k in range(3):
            t = 1.0 if k == int(y[i]) else 0.0
            total += float(w[y[i]]) * -(t * torch.log(p[i, k]) + (1 - t) * torch.log(1 - p[i, k]))
    assert float(cb_softmax_bce(z, y, w)) == pytest.approx(float(total) / 24, rel=1e-5)
    # rarer classes weigh more
    assert bool((w[:-1] < w[1:]).all())


@pytest.fixture(scope="module")
def stage1(tiny_learnable_fmnist, tmp_path_factory):
    base = [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=10", *FAST]
    out = tmp_path_factory.mktemp("maxnorm") / "stage1"
    Trainer(load_config("fmnist_lt_ce", base + ["train.epochs=2", "train.lr=0.05", "train.warmup_epochs=0"]), out).fit()
    return base, out


def _stage2(stage1, out, *extra):
    base, src = stage1
    m = Trainer(load_config("fmnist_lt_maxnorm", base + ["train.epochs=2", "train.lr=0.5", f"init_from={src}",
                                                          *extra]), out).fit()
    return m, load_checkpoint(src / "checkpoint.pt")["method"], load_checkpoint(out / "checkpoint.pt")["method"]


@pytest.mark.parametrize("project", ["step", "epoch"])
def test_the_stage_projects_when_told_and_ends_inside_the_first_stage_radius(stage1, tmp_path, monkeypatch, project):
    calls = []
    real = maxnorm_mod.maxnorm_project_

    def counted(w, radius):
        calls.append(torch.linalg.vector_norm(w, dim=1).max().item())
        return real(w, radius)

    monkeypatch.setattr(maxnorm_mod, "maxnorm_project_", counted)
    steps, after_step = [], maxnorm_mod.MaxNormStage.after_step

    def seen(self, state):
        steps.append((state.epoch, state.step, state.steps_per_epoch))
        return after_step(self, state)

    monkeypatch.setattr(maxnorm_mod.MaxNormStage, "after_step", seen)
    m, before, after = _stage2(stage1, tmp_path / project, f"method.maxnorm.project={project}")
    radius = float(maxnorm_threshold(before["classifier.weight"], 0.1))
    assert float(after["maxnorm_radius"]) == pytest.approx(radius)  # a buffer: a resumed run keeps it
    norms = torch.linalg.vector_norm(after["classifier.weight"], dim=1)
    assert float(norms.max()) <= radius * (1 + 1e-5)
    assert float(torch.linalg.vector_norm(before["classifier.weight"], dim=1).max()) > radius  # it had work to do
    per_epoch = steps[0][2]
    assert per_epoch >= 2 and len(steps) == 2 * per_epoch
    # step: after every optimizer step; epoch: once per epoch, after its last step
    assert len(calls) == (len(steps) if project == "step" else 2)
    # the backbone's weights are the first stage's; BN statistics follow the batches (shift_bn)
    learned = [k for k in before if k.startswith("backbone.") and not k.endswith(("running_mean", "running_var",
                                                                                  "num_batches_tracked"))]
    assert learned and all(torch.equal(before[k], after[k]) for k in learned)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_a_fresh_classifier_is_refused_it_has_no_radius(stage1, tmp_path):
    base, src = stage1
    with pytest.raises(ConfigError, match="reset_classifier=true leaves no first-stage classifier"):
        Trainer(load_config("fmnist_lt_maxnorm", base + [f"init_from={src}", "method.maxnorm.reset_classifier=true"]),
                tmp_path / "x").fit()


def test_glmc_maxnorm_is_the_stage_on_glmcs_backbone():
    cfg = load_config("cifar10_lt_glmc_maxnorm", ["init_from=/x"])
    glmc = load_config("cifar10_lt_glmc")
    assert cfg.method.name == "maxnorm" and cfg.model.width == glmc.model.width == 64
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.epochs, cfg.train.schedule) == (0.01, 0.1, 10, "cosine")
