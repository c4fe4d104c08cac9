"""Plugins: a method kept outside the package (examples/plugin_label_smoothing.py) becomes part
of the config tree, trains, and its run is evaluated again by a process that never imported
it. Everything that imports the example runs in a child process: a registration is for the
life of a process, and this one runs the other tests."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from allnc.config import load_config
from allnc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return _py(f"import sys; from allnc.cli import main; sys.exit(main({args!r}))", cwd)


@pytest.fixture
def lab(tmp_path, tiny_learnable_fmnist):
    """The example's two files in a folder of their own; the commands run from another one."""
    (tmp_path / "lab").mkdir()
    for f in ("plugin_label_smoothing.py", "label_smoothing.yaml"):
        shutil.copy(ROOT / "examples" / f, tmp_path / "lab" / f)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "lab", tmp_path / "elsewhere", tiny_learnable_fmnist


def test_a_plugin_method_trains_and_its_run_is_evaluated_by_a_process_that_never_imported_it(lab):
    """... and a process that cannot find the plugin's file says so in one line."""
    lab_dir, cwd, data = lab
    yaml = str(lab_dir / "label_smoothing.yaml")
    out = str(cwd / "run")
    # a second plugin registers a data source and a backbone: the tree's choices take them
    (lab_dir / "more.py").write_text(
        "from allnc.data.sources import SOURCES\nfrom allnc.models import BACKBONES\n\n"
        "SOURCES.register('my_source')(lambda d: None)\nBACKBONES.register('my_net')(lambda in_channels=3: None)\n")
    # one process: the tree holds the plugin's section, its keys are checked, it trains
    r = _py(f"""
import json, torch
import torch.nn.functional as F
from allnc.config import load_config
from allnc.errors import ConfigError
from allnc.methods import METHODS
cfg = load_config({yaml!r}, ["method.label_smoothing.eps=0.3"])
try:
    load_config({yaml!r}, ["method.label_smoothing.epz=0.3"])
    typo = None
except ConfigError as e:
    typo = str(e)
try:
    load_config("fmnist_lt_ce", ["data.name=my_source"])  # before the plugin
    raise SystemExit("data.name=my_source passed without its plugin")
except ConfigError as e:
    assert "my_source" in str(e)
more = load_config("fmnist_lt_ce", ["plugins=[{lab_dir / 'more.py'}]", "data.name=my_source", "model.name=my_net"])
assert (more.data.name, more.model.name) == ("my_source", "my_net")
from allnc.api import train
m = train({yaml!r}, {out!r}, {{"train.epochs": 2, "data.root": {str(data)!r}, "data.imbalance_factor": 10}},
          device="cpu", log=lambda *a: None)
# the registered method's loss: (1 - eps) CE + eps times the mean over classes of -log p
logits, y = torch.randn(6, 10), torch.arange(6)
from types import SimpleNamespace
got = METHODS.get("label_smoothing").loss_fn(SimpleNamespace(cfg=cfg), logits, y, None)
logp = F.log_softmax(logits, 1)
want = 0.7 * F.nll_loss(logp, y) + 0.3 * (-logp.mean(1)).mean()
print(json.dumps({{"eps": cfg.method.label_smoothing.eps, "plugins": list(cfg.plugins), "typo": typo,
                   "top1": m["top1"], "method": m["config"]["method"]["name"],
                   "loss_ok": bool(torch.allclose(got, want, atol=1e-6))}}))
""", cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["eps"] == 0.3 and got["method"] == "label_smoothing" and got["loss_ok"]
    # the file is named relative to the YAML file and recorded by its absolute path
    assert got["plugins"] == [str((lab_dir / "plugin_label_smoothing.py").resolve())]
    assert "did you mean 'method.label_smoothing.eps'" in got["typo"]
    saved = (cwd / "run" / "config.yaml").read_text()
    assert str((lab_dir / "plugin_label_smoothing.py").resolve()) in saved
    # a fresh process, which knows the plugin only from the run's config.yaml, scores the same
    e = _cli(["eval", out, "--device", "cpu"], ROOT)
    assert e.returncode == 0, e.stderr[-2000:]
    assert json.loads((cwd / "run" / "metrics.json").read_text())["top1"] == got["top1"]
    assert f"{got['top1']:.2f}" in e.stdout
    # the plugin's file gone: one line naming it
    (lab_dir / "plugin_label_smoothing.py").unlink()
    e = _cli(["eval", out, "--device", "cpu"], cwd)
    assert e.returncode == 2 and e.stderr.count("\n") == 1
    assert f"plugins: no file {(lab_dir / 'plugin_label_smoothing.py').resolve()}" in e.stderr


def test_plugin_errors_are_one_line_naming_the_plugin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"plugins: no module named 'no_such_lab\.methods'; install it"):
        load_config("fmnist_lt_ce", ["plugins=no_such_lab.methods"])
    with pytest.raises(ConfigError, match="plugins: no file .*missing.py"):
        load_config("fmnist_lt_ce", ["plugins=[missing.py]"])
    (tmp_path / "broken.py").write_text("import math\n\nx = 1 / 0\n")
    with pytest.raises(ConfigError, match=r"plugins: broken.py failed while importing \(ZeroDivisionError: .*"
                                          r"at broken.py:3\); fix the file"):
        load_config("fmnist_lt_ce", ["plugins=broken.py"])
    # a module that imports something missing is not itself missing: the error says what is
    (tmp_path / "needs_more.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="plugins: 'needs_more' failed while importing .*not_installed_dependency"):
        load_config("fmnist_lt_ce", ["plugins=needs_more"])
    with pytest.raises(ConfigError, match="plugins in the command line must be a module name"):
        load_config("fmnist_lt_ce", ["plugins={a: 1}"])


def test_a_plugin_that_fails_halfway_takes_back_what_it_registered(tmp_path):
    """Fixed and imported again in the same process (an API user's retry), a plugin that had
    registered a backbone before failing is accepted, not refused as "registered twice"."""
    (tmp_path / "half.py").write_text("from allnc.models import BACKBONES\n\n"
                                      "BACKBONES.register('half_net')(lambda in_channels=3: None)\n"
                                      "raise RuntimeError('not finished')\n")
    r = _py("""
from pathlib import Path
from allnc.config import load_config
from allnc.errors import ConfigError
from allnc.models import BACKBONES
try:
    load_config("fmnist_lt_ce", ["plugins=[half.py]"])
except ConfigError as e:
    print("failed:", e)
print("kept:", "half_net" in BACKBONES)
p = Path("half.py")
p.write_text(p.read_text().replace("raise RuntimeError('not finished')", ""))
print("second:", load_config("fmnist_lt_ce", ["plugins=[half.py]", "model.name=half_net"]).model.name)
""", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("failed: plugins: half.py failed while importing (RuntimeError: not finished at half.py:4)")
    assert lines[1:] == ["kept: False", "second: half_net"]


def test_plugins_from_every_layer_are_kept_once_each(tmp_path, monkeypatch):
    """A base file's plugin is kept when the file on top names another (a list key would
    otherwise be replaced), and a plugin named twice is imported and recorded once."""
    for name in ("one", "two"):
        (tmp_path / f"{name}.py").write_text(f"LOADED = {name!r}\n")
    (tmp_path / "base.yaml").write_text("_base_: fmnist_lt_ce\nplugins: [one.py]\n")
    (tmp_path / "top.yaml").write_text("_base_: base.yaml\nplugins: [two.py, one.py]\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(str(tmp_path / "top.yaml"), ["plugins=two.py"])
    assert list(cfg.plugins) == [str(tmp_path / "one.py"), str(tmp_path / "two.py")]
    assert sum(name.startswith("allnc_plugin_one_") for name in sys.modules) == 1


def test_the_docs_show_the_example_config_as_it_is():
    import re

    import yaml

    text = (ROOT / "docs" / "architecture.md").read_text()
    shown = re.search(r"## Your own code.*?```yaml\n(.*?)```", text, re.S).group(1)
    assert yaml.safe_load(shown) == yaml.safe_load((ROOT / "examples" / "label_smoothing.yaml").read_text())


def test_config_keys_lists_what_plugins_add(tmp_path):
    (tmp_path / "extra.py").write_text(
        "from dataclasses import dataclass\nfrom allnc.methods import METHODS\nfrom allnc.methods.ce import CrossEntropy\n\n"
        "@dataclass\nclass ExtraConfig:\n    # how extra it is\n    amount: float = 0.5\n\n"
        "METHODS.register('extra', section='extra', config=ExtraConfig)(type('Extra', (CrossEntropy,), {}))\n")
    r = _cli(["config", "--keys", f"plugins={tmp_path / 'extra.py'}"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'method.extra.amount = 0.5    # how extra it is' in r.stdout.splitlines()
    assert "method.name = \"ce\"" in r.stdout and "extra" in [
        line for line in r.stdout.splitlines() if line.startswith("method.name")][0]
    r = _cli(["config", "--keys", "train.epochs=3"], tmp_path)
    assert r.returncode == 2 and "--keys covers every config, so it takes no config name or override (but plugins=...)" in r.stderr


def test_config_with_only_overrides_prints_the_default_tree_with_them(capsys):
    """`allnc config key=value` (no name): the override lands where a name would, and is
    taken as an override, not listed over nor taken for a config name."""
    from allnc.cli import main

    assert main(["config", "train.epochs=3", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "  epochs: 3\n" in out and "seed: 7\n" in out
