"""Focal loss, added as one method module plus one config fragment."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allnc.config import builtin_names, load_config
from allnc.methods import METHODS, DataInfo, StepState, build_method
from allnc.methods.focal import focal_loss


def test_gamma_zero_is_cross_entropy_and_a_worked_example():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    assert torch.allclose(focal_loss(logits, y, 0.0), F.cross_entropy(logits, y))
    # p_t = 0.8: -(1 - 0.8)^2 log 0.8
    two = torch.log(torch.tensor([[0.8, 0.2]]))
    assert float(focal_loss(two, torch.tensor([0]), 2.0)) == pytest.approx(0.04 * -math.log(0.8), rel=1e-5)


def test_focal_down_weights_the_well_classified():
    """Relative to CE, an easy sample's gradient shrinks by far more than a hard one's."""
    easy = torch.tensor([[4.0, 0.0]], requires_grad=True)
    hard = torch.tensor([[0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0])

    def ratio(x):
        (gf,) = torch.autograd.grad(focal_loss(x, y, 2.0), x)
        (gc,) = torch.autograd.grad(F.cross_entropy(x, y), x)
        return float(gf.norm() / gc.norm())

    assert ratio(easy) < 0.01 < 0.3 < ratio(hard)


def test_one_file_and_one_fragment_make_a_method_everywhere():
    assert "focal" in METHODS.names()
    for ds in ("fmnist_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018", "places_lt"):
        assert f"{ds}_focal" in builtin_names()
    assert "cifar10_lt_focal_strong" in builtin_names()
    cfg = load_config("fmnist_lt_focal", ["method.focal.gamma=1.0", "model.width=8"])
    m = build_method(cfg, DataInfo(np.array([50, 20, 5]), in_channels=1, image_hw=(28, 28)))
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, _ = m.training_loss([{"x": x, "y": y}], StepState(0, 1))
    _, logits = m.features(x)
    assert torch.allclose(loss, focal_loss(logits, y, 1.0))
