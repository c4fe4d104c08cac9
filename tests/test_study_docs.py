"""The method study's tables in docs/study_fmnist.md and docs/method.md are rendered from its
results files (``python benchmarks/study_fmnist.py render``), never typed by hand."""
import importlib.util
from pathlib import Path

from allnc.config import cell_name
from allnc.report.results import markdown_blocks, update_markdown

ROOT = Path(__file__).resolve().parents[1]
# the study is a benchmark script, not package code: load it from its file
_spec = importlib.util.spec_from_file_location("study_fmnist", ROOT / "benchmarks" / "study_fmnist.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_docs_tables_match_the_study_files():
    tables = study.render_tables_from_files()
    seen = set()
    for path in study.DOCS:
        text = path.read_text()
        seen.update(study.trial_blocks(text))
        assert study.update_trial_blocks(text, tables) == text, \
            f"{path.name} is stale: run python benchmarks/study_fmnist.py render"
    assert seen == set(tables), "every study table has exactly one kind of block in the docs"


def test_every_trial_has_a_label():
    names = [n for rows in study.TRIALS.values() for n, _, _ in rows] + [n for n, _, _ in study.CRT]
    assert set(names) <= set(study.TRIAL_LABELS)


def _t(name, val=None, wall=100.0, overrides=(), **kw):
    r = {"name": name, "config": "c", "overrides": list(overrides), **kw}
    if val is not None:
        r.update(val_top1=val, wall_time_s=wall)
    return r


def test_synthetic_trials_bold_the_chosen_trial_mark_cuts_and_show_the_chosen_alpha():
    ce = [_t("ce_instance_lr0.1", 78.0, 521.5, ["method.sampler=instance"]),
          _t("ce_balanced_lr0.1", 88.004, 176.2, ["method.sampler=balanced"])]
    bcl = [_t("bcl_tau0.07_scl0.35", 87.1, 1354.7), {"name": "bcl_tau0.1_scl1.0", "cut": "not run"}]
    allnc = [_t("allnc_default", 84.9, 10.0, inference_alpha=0.45, val_top1_half=84.8, val_top1_final=78.9),
             _t("allnc_bal", 86.366, 10.0, inference_alpha=0.15, val_top1_half=83.233, val_top1_final=86.3)]
    trials = {"trials": {"ce": ce, "bcl": bcl, "allnc": allnc},
              "chosen": {"ce": ce[1], "bcl": bcl[0], "allnc": {**allnc[1]}}}
    t = study.render_trial_tables(trials)
    single = t["single"].splitlines()
    assert "| CE | instance sampler, lr 0.1 (the plain CE row) | 78.00 | 522 |" in single
    assert ("| | **class-balanced sampler, lr 0.1** (the CE + class-balanced sampling row) | **88.00** | 176 |"
            in single)
    assert "| | tau 0.1, lambda_SCL 1.0 | cut for time | |" in single
    assert not any("AllNC" in ln for ln in single)  # two-branch methods have their own table
    two = t["two_branch"].splitlines()
    assert "| AllNC | the earlier defaults (reversed sampler) | 84.90 (0.45) | 84.80 | 78.90 |" in two
    assert "| | **+ balanced sampler** | **86.37** (0.15) | 83.23 | 86.30 |" in two
    assert "| + balanced sampler (**the default**) | **86.37** | 83.23 | 86.30 |" in t["allnc"].splitlines()


def _rec(config, seed, top1, posthoc=None, epochs=12, table_epochs=None):
    cell = cell_name(config, 100, epochs, seed, 300, posthoc=posthoc)
    r = {"cell": cell, "config_name": config, "top1": top1,
         "config": {"seed": seed, "data": {"imbalance_factor": 100}, "train": {"epochs": epochs}}}
    return dict(r, table_epochs=table_epochs) if table_epochs else r


def test_final_line_is_the_study_rows_best_first_with_mean_and_sample_std():
    recs = [_rec("fmnist_lt_ce", 0, 70.0), _rec("fmnist_lt_ce", 1, 72.0), _rec("fmnist_lt_allnc", 0, 80.0),
            _rec("fmnist_lt_ce", 0, 75.0, posthoc="tau_norm"),
            _rec("fmnist_lt_crt", 0, 76.0, epochs=8, table_epochs=12),  # cRT joins its CE run's table
            _rec("fmnist_lt_gbbn_only", 0, 90.0)]  # the ablation is not a study row
    kept = study.final_records(recs)
    assert [r["config_name"] for r in kept] == ["fmnist_lt_ce", "fmnist_lt_ce", "fmnist_lt_allnc", "fmnist_lt_ce",
                                                "fmnist_lt_crt"]
    head, _, vals = study.render_final_table(kept).splitlines()
    assert head == "| AllNC | cRT | CE + tau-norm (post hoc) | CE |"
    assert vals == "| 80.00 | 76.00 | 75.00 | 71.00 ± 1.41 |"


def test_trials_blocks_and_readme_results_blocks_do_not_match_each_other():
    text = "<!-- trials:single -->\nold\n<!-- /trials -->\n<!-- results:x -->\nkeep\n<!-- /results -->\n"
    assert study.trial_blocks(text) == ["single"] and markdown_blocks(text) == ["x"]
    new = study.update_trial_blocks(text, {"single": "| new |\n"})
    assert new == text.replace("old", "| new |")
    assert update_markdown(new, {"x": "keep\n"}) == new


def test_long_table_shows_the_change_and_both_rankings():
    """The 30-epoch check's table: signed change per method, an unfinished run said as such,
    and the "ce" method named after its class-balanced trial (the CE + RS row)."""
    long = {"ranking_12": ["ce", "allnc", "bcl"], "ranking_30": ["allnc", "ce"],
            "methods": {"ce": {"trial": "ce_balanced_lr0.1", "val_top1_12": 87.9667, "val_top1": 87.5, "wall_time_s": 600.4},
                        "allnc": {"trial": "allnc_bal_centre_both_eqn", "val_top1_12": 86.4, "val_top1": 88.05},
                        "bcl": {"trial": "bcl_tau0.07_scl0.35", "val_top1_12": 87.1}}}
    text = study.render_long_table(long)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows[0].startswith("| CE + class-balanced sampling |") and "| 87.97 | 87.50 | -0.47 | 600 |" in rows[0]
    assert "| 86.40 | 88.05 | +1.65 |" in rows[1]
    assert "| 87.10 | not finished |" in rows[2]
    assert "After 30 epochs: AllNC > CE + class-balanced sampling." in text
    assert study.render_long_table(None).startswith("Not run yet")


def test_a_run_done_again_moves_the_earlier_one_aside(tmp_path):
    # `--only` runs a method again: an earlier run directory must neither be taken as finished
    # (the grid skips finished runs) nor be lost
    run = tmp_path / "allnc_e30"
    run.mkdir()
    (run / "metrics.json").write_text('{"val": {"top1": 1.0}}')
    moved = study.move_aside(run)
    assert not run.exists() and moved.parent == tmp_path and moved.name.startswith("allnc_e30.before-")
    assert (moved / "metrics.json").read_text() == '{"val": {"top1": 1.0}}'
    assert study.move_aside(tmp_path / "never_ran") is None


def test_the_long_phase_takes_the_best_four_without_crt_and_always_allnc():
    def chosen(**val):
        return {"chosen": {m: {"val_top1": v} for m, v in val.items()}}

    assert study.LONG_TOP == 4
    t = chosen(crt=99, ce=90, bcl=89, la=88, ldam_drw=87, allnc=80, bbn=70)
    assert study.long_methods(t) == ["ce", "bcl", "la", "ldam_drw", "allnc"]  # cRT left out, AllNC added
    t = chosen(ce=90, allnc=89.5, bcl=89, la=88, ldam_drw=87)
    assert study.long_methods(t) == ["ce", "allnc", "bcl", "la"]  # AllNC among them: not added twice


def test_long_only_add_runs_a_method_outside_the_four_and_marks_its_row(tmp_path, monkeypatch):
    """``long --only M --add``: a method the phase does not pick gets its 30-epoch row, marked
    added (with the reason); it does not make the phase's own set look changed."""
    import json
    from types import SimpleNamespace

    import pytest

    def trial(m):  # a real trial name of the method (the table labels it)
        return study.TRIALS[m][0][0] if m in study.TRIALS else study.CRT[0][0]

    chosen = {m: {"name": trial(m), "config": f"fmnist_lt_{m}", "overrides": [], "val_top1": v}
              for m, v in dict(ce=90.0, bcl=89.0, la=88.0, ldam_drw=87.0, allnc=86.0, paco=80.0, crt=95.0).items()}
    trials, long = tmp_path / "trials.json", tmp_path / "long.json"
    trials.write_text(json.dumps({"chosen": chosen}))
    rows = {m: {"trial": trial(m), "val_top1_12": chosen[m]["val_top1"], "val_top1": 90.0} for m in study.long_methods(
        {"chosen": chosen})}
    long.write_text(json.dumps({"methods": rows, **study.long_rankings(rows)}))
    monkeypatch.setattr(study, "TRIALS_FILE", trials)
    monkeypatch.setattr(study, "LONG_FILE", long)
    other = {"trial": study.TRIALS["glmc"][0][0], "val_top1_12": 79.0, "val_top1": 84.0, "added": "x"}

    def run_long(*a, **k):  # meanwhile another --only run writes its row: it must survive
        d = json.loads(long.read_text())
        d["methods"]["glmc"] = other
        long.write_text(json.dumps(d))

    monkeypatch.setattr(study, "run_long", run_long)
    monkeypatch.setattr(study, "val_figures", lambda d: {"val_top1": 85.5, "wall_time_s": 100.0})
    args = SimpleNamespace(why="its authors train 400 epochs", add=False, out=str(tmp_path), parallel=1, deadline=None)
    with pytest.raises(SystemExit, match="--add"):
        study.phase_long_only(args, ("paco",))
    args.add = True
    with pytest.raises(SystemExit, match="no first stage"):
        study.phase_long_only(args, ("crt",))
    data = study.phase_long_only(args, ("paco",))
    assert data["methods"]["paco"]["added"] == "its authors train 400 epochs"
    assert data["methods"]["glmc"] == other
    assert data["methods"]["paco"]["val_top1"] == 85.5 and data["ranking_30"][-2:] == ["paco", "glmc"]
    assert data["reruns"][-1]["set_unchanged"] is True
    assert data["reruns"][-1]["command"].endswith("long --only paco --add")
    assert "| PaCo (added) |" in study.render_long_table(data)


def test_errors_phase_reads_the_validation_confusion_of_the_imbalance_100_runs(tmp_path, monkeypatch):
    """Seeds 0 and 1 of CE at imbalance 100 count; a post-hoc cell, an imbalance-50 cell and a
    run without a validation confusion do not. The figures are those of allnc.metrics."""
    import argparse
    import json

    from allnc.metrics import headward_errors

    counts = [500, 200, 50, 10]
    confs = {0: [[8, 1, 1, 0], [3, 5, 1, 1], [2, 2, 4, 2], [4, 1, 0, 5]],
             1: [[9, 1, 0, 0], [1, 8, 1, 0], [0, 1, 9, 0], [1, 0, 1, 8]]}

    def rec(cell, conf):
        return {"cell": cell, "config_name": "fmnist_lt_ce", "class_counts": counts,
                "val": {"top1": 70.0, "confusion": conf}}

    res = tmp_path / "results"
    res.mkdir()
    cells = {s: cell_name("fmnist_lt_ce", 100, study.EPOCHS, s, study.VAL) for s in (0, 1, 2)}
    for s in (0, 1):
        (res / f"{cells[s]}.json").write_text(json.dumps(rec(cells[s], confs[s])))
    others = [rec(cells[0] + "__posthoc_tau_norm", confs[1]), rec(cell_name("fmnist_lt_ce", 50, study.EPOCHS, 0, study.VAL), confs[1]),
              rec(cells[2], None)]
    for r in others:
        (res / f"{r['cell']}.json").write_text(json.dumps(r))
    monkeypatch.setattr(study, "ERRORS_FILE", tmp_path / "errors.json")
    study.phase_errors(argparse.Namespace(results=str(res), parallel=2, out=str(tmp_path)))
    data = json.loads((tmp_path / "errors.json").read_text())
    assert list(data["rows"]) == ["ce"] and data["rows"]["ce"]["cells"] == [cells[0], cells[1]]
    assert [r["headward"] for r in data["rows"]["ce"]["runs"]] == [headward_errors(confs[s], counts)["all"] for s in (0, 1)]
    table = study.render_errors_table(data)
    assert "| CE | 0, 1 | 70.00 ± 0.00 |" in table
