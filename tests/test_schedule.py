"""The learning-rate schedules on worked examples (engine.schedule.lr_at)."""
import math

import pytest

from allnc.engine.schedule import lr_at


def test_warmup_rises_linearly_per_step_to_the_base_rate():
    # 2 warm-up epochs of 4 steps: 1/8, 2/8, ... 8/8 of the base, then the schedule
    got = [lr_at(0.1, e, s, 4, 10, 2, "constant") for e in range(2) for s in range(4)]
    assert got == pytest.approx([0.1 * k / 8 for k in range(1, 9)])
    assert lr_at(0.1, 2, 0, 4, 10, 2, "constant") == 0.1


def test_step_schedule_decays_at_each_milestone():
    lr = [lr_at(0.1, e, 0, 5, 200, 5, "step", (160, 180), 0.01) for e in (159, 160, 179, 180, 199)]
    assert lr == pytest.approx([0.1, 1e-3, 1e-3, 1e-5, 1e-5])


def test_cosine_is_half_a_cosine_read_at_the_start_of_each_step():
    base, steps, epochs, warm = 0.1, 4, 10, 2
    n = (epochs - warm) * steps  # 32 steps after the warm-up
    for k in (0, 8, 16, 31):
        e, s = warm + k // steps, k % steps
        assert lr_at(base, e, s, steps, epochs, warm, "cosine") == pytest.approx(
            0.5 * base * (1 + math.cos(math.pi * k / n)))
    assert lr_at(base, warm + 4, 0, steps, epochs, warm, "cosine") == pytest.approx(base / 2)  # half way
    # the last step: the small positive rate the docstring names, not zero
    last = lr_at(base, epochs - 1, steps - 1, steps, epochs, warm, "cosine")
    assert last == pytest.approx(base * (1 - math.cos(math.pi / n)) / 2) and last > 0
