"""The Python API (allnc.api) and the README example that shows it, run as written."""
import re
from pathlib import Path

import pytest

from allnc import api
from allnc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data.imbalance_factor": 10, "model.width": 8, "train.batch_size": 32, "data.num_workers": 0,
        "train.progress": False, "train.warmup_epochs": 0}


def test_readme_python_example_runs_as_written(tiny_learnable_fmnist, tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tested: tests/test_api.py runs this block -->\n```python\n(.*?)```", text, re.S).group(1)
    real = api.train

    def tiny_train(name, out, overrides=None, **kw):  # the README's call, on this test's tiny data
        return real(name, out, {**(overrides or {}), **TINY, "data.root": str(tiny_learnable_fmnist)}, **kw)

    monkeypatch.setattr(api, "train", tiny_train)
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(block, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    top1, groups = printed[0]
    assert 0 <= top1 <= 100 and set(groups) == {"many", "medium", "few"}
    assert printed[1][0] is True  # the loaded run evaluates to the same top-1
    assert printed[1][1] == ["T-shirt/top", "Trouser", "Pullover"]  # the class names, not indices
    run = api.load_run(tmp_path / "runs" / "api-demo", device="cpu")
    with pytest.raises(ConfigError, match="no validation split.*data.val_per_class=N"):
        run.evaluate("val")
    with pytest.raises(ConfigError, match="'bogus' is not 'test' or 'val'"):
        run.evaluate("bogus")


def test_overrides_are_typed_and_checked(tiny_learnable_fmnist, tmp_path):
    cfg = api.config("fmnist_lt_ce", {"train.epochs": 3}, model__width=8)
    assert cfg.train.epochs == 3 and cfg.model.width == 8 and cfg.config_name == "fmnist_lt_ce"
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        api.config("fmnist_lt_ce", {"train.epoch": 3})
    with pytest.raises(ConfigError, match="not a finite number"):
        api.config("fmnist_lt_ce", train__lr=float("nan"))
    m = api.train("fmnist_lt_ce", tmp_path / "r", {**TINY, "data.root": str(tiny_learnable_fmnist)},
                  train__epochs=1, device="cpu", log=lambda *a: None)
    run = api.load_run(tmp_path / "r", device="cpu")
    assert run.evaluate()["per_class"] == m["per_class"] and run.epoch == 1
    import torch

    x = torch.zeros(2, 1, 28, 28)
    p = run.predict(x)
    assert p.shape == (2, 10) and torch.allclose(p.sum(1), torch.ones(2))
    # another float precision is the same images; integers and wrong shapes are refused in one line
    assert torch.allclose(run.predict(x.double()), p)
    with pytest.raises(ConfigError, match="normalised float images; this batch is uint8"):
        run.predict(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ConfigError, match=r"B x 1 x H x W.*\(2, 3, 28, 28\)"):
        run.predict(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ConfigError, match=r"B x 1 x H x W.*\(1, 28, 28\)"):
        run.predict(torch.zeros(1, 28, 28))
