"""Calibration: the ECE on a worked example, streamed in batches, and as `evaluate_accuracy`
computes it for a run (the softmax in the units the loss trained: LDAM's scale)."""
import pytest
import torch

from allnc.config import load_config
from allnc.engine.evaluate import evaluate_accuracy
from allnc.engine.loaders import iter_eval
from allnc.engine.trainer import Trainer
from allnc.metrics import CalibrationAccumulator, expected_calibration_error

# confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.35 (right): with 15 bins (lo, hi]
# they fall in bins 14, 14, 8 and 5, so ECE = (|0.5 - 0.95| * 2 + |1 - 0.55| + |1 - 0.35|) / 4
PROBS = torch.tensor([[0.95, 0.03, 0.02], [0.95, 0.03, 0.02], [0.25, 0.55, 0.20], [0.32, 0.33, 0.35]])
TARGETS = torch.tensor([0, 1, 1, 2])


def test_ece_on_a_worked_example():
    r = CalibrationAccumulator()
    r.update(PROBS, TARGETS)
    out = r.result()
    assert out["ece"] == pytest.approx(100 * (0.45 * 2 + 0.45 + 0.65) / 4)
    filled = {i: b for i, b in enumerate(out["reliability"]) if b["count"]}
    assert sorted(filled) == [5, 8, 14] and filled[14]["count"] == 2
    assert (filled[14]["accuracy"], filled[14]["confidence"]) == (pytest.approx(0.5), pytest.approx(0.95))
    assert sum(b["count"] for b in out["reliability"]) == 4


def test_batches_give_the_one_shot_figure_and_calibrated_bins_give_zero():
    acc = CalibrationAccumulator()
    for i in range(0, 4, 3):
        acc.update(PROBS[i:i + 3], TARGETS[i:i + 3])
    assert acc.result()["ece"] == pytest.approx(expected_calibration_error(PROBS, TARGETS))
    # ten predictions at confidence 0.8, eight of them right: calibrated
    p = torch.tensor([[0.8, 0.2]] * 10)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-5)  # float32 0.8


def test_a_run_is_scored_on_the_softmax_its_loss_trained(tiny_learnable_fmnist, tmp_path):
    cfg = load_config("fmnist_lt_ldam_drw", [f"data.root={tiny_learnable_fmnist}", "data.imbalance_factor=10",
                                             "device=cpu", "train.progress=false", "model.width=8", "train.epochs=1",
                                             "train.batch_size=32", "data.num_workers=0"])
    t = Trainer(cfg, tmp_path / "run")
    metrics = t.fit()
    ctx = t.ctx
    ctx.method.eval()
    with torch.no_grad():
        pairs = [(ctx.method(x), y) for x, y in iter_eval(ctx.cfg, ctx.bundle, "test", ctx.choice, ctx.device)]
    z, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    s = float(cfg.method.ldam.scale)
    assert metrics["ece"] == pytest.approx(expected_calibration_error(torch.softmax(s * z, 1), y))
    assert metrics["ece"] != pytest.approx(expected_calibration_error(torch.softmax(z, 1), y))
    assert evaluate_accuracy(ctx)["ece"] == pytest.approx(metrics["ece"])
