"""The README's demo figures are the ones in the benchmark files that measured them
(``benchmarks/demo_time.py`` and ``benchmarks/demo_cost.py``), and the demo trains the config
those files chose."""
import json
import re
from pathlib import Path

from allnc.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = ROOT / "benchmarks" / "results"


def test_demo_table_rows_are_the_timed_runs():
    timed = json.loads((RESULTS / "demo_time.json").read_text())
    rows = {m.group(1): (m.group(2), int(m.group(3)), m.group(4)) for m in
            re.finditer(r"^\| ([^|]+?) \| `(\w+)`[^|]*\| (\d+) s \| ([\d.]+) \|$", README, re.M)}
    names = {"the demo": "demo", "the full model (the demo before)": "full", "the demo before the method study": "earlier"}
    assert set(rows) == set(names)
    for label, key in names.items():
        run = timed["runs"][key]
        assert rows[label] == (run["config"], round(run["process_wall_s"]), f"{run['top1']:.2f}"), label
    assert f"{timed['threads']} threads" in README and f"{timed['cpu_cores']}-core" in README


def test_demo_choice_figures_and_the_demo_config():
    cost = json.loads((RESULTS / "demo_cost.json").read_text())
    choice, ms = cost["choice"], cost["backbone_cpu_ms_per_image_b128"]
    assert cost["preset_matches_choice"] and choice["chosen"] == "s2_w16_e16"
    assert f"{choice['means'][choice['chosen']]:.2f} against {choice['full_model_mean']:.2f}" in README
    assert f"{ms['s2_w16']:.2f} ms of CPU time per image, against {ms['w16']:.2f} ms" in README
    # setup.sh's demo trains the chosen config, and that config is the chosen candidate
    assert "train --config fmnist_lt_allnc_fast " in (ROOT / "scripts" / "setup.sh").read_text()
    cfg = load_config("fmnist_lt_allnc_fast")
    assert (cfg.model.stem_stride, cfg.train.epochs) == (2, 16)
