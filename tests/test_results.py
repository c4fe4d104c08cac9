"""Results files, cell names and the README tables rendered from them."""
import json
from pathlib import Path

import pytest

from allnc.config import cell_name, load_config, parse_cell_name, to_dict
from allnc.errors import ConfigError
from allnc.report.results import load_results, markdown_blocks, render_table, render_tables, table_id, update_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_cell_name_resolves_to_its_config():
    name = cell_name("cifar10_lt_allnc", 50, 200, 2)
    assert name == "cifar10_lt_allnc__if50__e200__seed2"
    assert parse_cell_name(name) == ("cifar10_lt_allnc", ["data.imbalance_factor=50", "train.epochs=200", "seed=2"])
    a = to_dict(load_config(name, ["train.lr=0.05"]))
    b = to_dict(load_config("cifar10_lt_allnc", ["data.imbalance_factor=50", "train.epochs=200", "seed=2",
                                                 "train.lr=0.05"]))
    assert a == b and a["data"]["imbalance_factor"] == 50 and a["seed"] == 2
    v = cell_name("fmnist_lt_ce", 100, 12, 1, val_per_class=300)
    assert v == "fmnist_lt_ce__if100__e12__val300__seed1"
    assert parse_cell_name(v)[1] == ["data.imbalance_factor=100", "train.epochs=12", "data.val_per_class=300", "seed=1"]
    with pytest.raises(ConfigError, match="not a results cell name"):
        parse_cell_name("cifar10_lt_allnc__if50")


def test_a_bad_cell_name_is_named_as_the_source_of_the_error():
    from allnc.config import POSTHOC_METHODS
    from allnc.engine.posthoc import CORRECTIONS

    assert set(POSTHOC_METHODS) == set(CORRECTIONS.names())
    with pytest.raises(ConfigError, match="'bogus' is not a post-hoc correction.*tau_norm, logit_adjust"):
        load_config("fmnist_lt_ce__if100__e12__seed0__posthoc_bogus")
    assert load_config("fmnist_lt_ce__if100__e12__seed0__posthoc_tau_norm").seed == 0
    with pytest.raises(ConfigError, match=r"bad value '1.2.3' for 'data.imbalance_factor' in the cell name "
                                          r"'fmnist_lt_ce__if1.2.3__e12__seed0'"):
        load_config("fmnist_lt_ce__if1.2.3__e12__seed0")
    with pytest.raises(ConfigError, match=r"train.epochs.*comes from the cell name 'fmnist_lt_ce__if100__e0__seed0'"):
        load_config("fmnist_lt_ce__if100__e0__seed0")
    # overridden on the command line, the value is no longer the cell's
    with pytest.raises(ConfigError) as e:
        load_config("fmnist_lt_ce__if100__e12__seed0", ["train.epochs=0"])
    assert "cell name" not in str(e.value)


def _rec(config, seed, top1, many, medium, few=None, nc1=None, imb=100, epochs=200, wall=10.0, cos_mu=None):
    nc = {"nc1_cb": nc1, "medium_means_cos": cos_mu} if nc1 else None
    return {"cell": cell_name(config, imb, epochs, seed), "config_name": config, "top1": top1,
            "groups": {"many": many, "medium": medium, "few": few}, "nc_train": nc,
            "wall_time_s": wall, "device": "GPU X", "data_label": "data Y",
            "config": {"seed": seed, "data": {"imbalance_factor": imb}, "train": {"epochs": epochs}}}


def test_table_means_and_sample_std_over_seeds_in_method_order():
    recs = [_rec("cifar10_lt_allnc", 0, 80.0, 90.0, 70.0, nc1=0.5, cos_mu=0.1),
            _rec("cifar10_lt_allnc", 1, 82.0, 91.0, 74.0, nc1=0.7, cos_mu=None),
            _rec("cifar10_lt_ce", 0, 70.0, 88.0, 40.0)]
    text = render_table(recs)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    assert rows[0].startswith("| CE | 0 | 70.00 | 88.00 | 40.00 | – | – |")  # CE before AllNC; empty few "–"
    # mean 81, sample std sqrt(((80-81)^2 + (82-81)^2) / 1) = 1.41; medium 72 ± 2.83; NC1 mean
    # 0.600; no cos w; cos mu from the one seed that has it
    assert rows[1].startswith("| AllNC | 0, 1 | 81.00 ± 1.41 | 90.50 ± 0.71 | 72.00 ± 2.83 | – | 0.600 | – | 0.100 |")
    assert "`cifar10_lt_allnc__if100__e200__seed0`, `cifar10_lt_allnc__if100__e200__seed1`" in rows[1]
    assert "Data: data Y. Device: GPU X." in text


def test_tables_split_by_dataset_imbalance_epochs_and_preset():
    recs = [_rec("cifar10_lt_ce", 0, 70, 80, 50), _rec("cifar10_lt_ce", 0, 75, 80, 60, imb=50),
            _rec("cifar10_lt_ce_strong", 0, 72, 80, 55), _rec("fmnist_lt_ce", 0, 79, 81, 70, epochs=12)]
    assert sorted(render_tables(recs)) == ["cifar10_lt_if100_e200", "cifar10_lt_if100_e200_strong",
                                           "cifar10_lt_if50_e200", "fmnist_lt_if100_e12"]
    assert table_id(recs[2]) == "cifar10_lt_if100_e200_strong"


def test_markdown_blocks_are_replaced_and_empty_ones_say_so():
    text = "intro\n<!-- results:a -->\nold\n<!-- /results -->\nmid\n<!-- results:b -->\nstale\n<!-- /results -->\n"
    new = update_markdown(text, {"a": "| table a |\n"})
    assert new == "intro\n<!-- results:a -->\n| table a |\n<!-- /results -->\nmid\n<!-- results:b -->\nNo results yet.\n<!-- /results -->\n"
    assert markdown_blocks(new) == ["a", "b"] and update_markdown(new, {"a": "| table a |\n"}) == new


def test_a_results_file_is_named_after_its_cell(tmp_path):
    r = _rec("cifar10_lt_ce", 0, 70, 80, 50)
    (tmp_path / "other.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match="named after its cell"):
        load_results(tmp_path)


def test_readme_tables_match_the_results_files():
    """Every README block is exactly the table rendered from results/ (scripts/render_results.py
    writes them), and every table that results/ gives has a block."""
    readme = (ROOT / "README.md").read_text()
    tables = render_tables(load_results(ROOT / "results")) if (ROOT / "results").is_dir() else {}
    assert update_markdown(readme, tables) == readme, "README is stale: run python scripts/render_results.py"
    assert set(tables) <= set(markdown_blocks(readme)), "a results table has no README block"


def test_posthoc_cells_name_their_correction_resolve_to_the_run_config_and_get_their_own_row():
    from allnc.config import cell_posthoc, load_config

    name = cell_name("fmnist_lt_ce", 100, 12, 0, 300, posthoc="tau_norm")
    assert name == "fmnist_lt_ce__if100__e12__val300__seed0__posthoc_tau_norm"
    assert cell_posthoc(name) == "tau_norm" and cell_posthoc("fmnist_lt_ce__if100__e12__seed0") is None
    assert parse_cell_name(name) == parse_cell_name("fmnist_lt_ce__if100__e12__val300__seed0")
    cfg = load_config(name)
    assert cfg.config_name == "fmnist_lt_ce" and cfg.data.val_per_class == 300 and cfg.train.epochs == 12
    own = _rec("fmnist_lt_ce", 0, 70.0, 80.0, 50.0, epochs=12)
    fixed = dict(_rec("fmnist_lt_ce", 0, 74.0, 78.0, 66.0, epochs=12), cell=own["cell"] + "__posthoc_tau_norm")
    rows = [ln for ln in render_table([fixed, own]).splitlines() if ln.startswith("| CE")]
    assert rows[0].startswith("| CE | 0 | 70.00 | 80.00 | 50.00 |")
    assert rows[1].startswith("| CE + tau-norm (post hoc) | 0 | 74.00 | 78.00 | 66.00 |")


def test_posthoc_results_record_takes_the_corrected_test_figures(tmp_path):
    from allnc.report.results import result_record

    run = tmp_path / "run"
    run.mkdir()
    cfg = {"seed": 0, "data": {"imbalance_factor": 100}, "train": {"epochs": 12}}
    (run / "metrics.json").write_text(json.dumps({"top1": 70.0, "groups": {"many": 80.0}, "config": cfg, "epoch": 12}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 12, "nc": {"nc1_cb": 1.0}}) + "\n")
    (run / "posthoc_logit_adjust.json").write_text(json.dumps(
        {"method": "logit_adjust", "tau": 1.0, "val_top1": 81.0, "test": {"top1": 77.5, "groups": {"many": 79.0}},
         "run_test": {"top1": 70.0}}))
    own = result_record(run, "fmnist_lt_ce__if100__e12__seed0")
    ph = result_record(run, "fmnist_lt_ce__if100__e12__seed0__posthoc_logit_adjust")
    assert own["top1"] == 70.0 and own["nc_train"] == {"nc1_cb": 1.0}
    assert ph["top1"] == 77.5 and ph["groups"] == {"many": 79.0} and ph["nc_train"] is None
    assert ph["posthoc"]["tau"] == 1.0 and ph["config_name"] == "fmnist_lt_ce"


def test_a_run_started_from_another_joins_that_runs_table():
    crt = dict(_rec("fmnist_lt_crt", 0, 85.0, 84.0, 90.0, epochs=8), table_epochs=12)
    assert table_id(crt) == "fmnist_lt_if100_e12"
    assert table_id(_rec("fmnist_lt_crt", 0, 85.0, 84.0, 90.0, epochs=8)) == "fmnist_lt_if100_e8"


def test_records_carry_where_the_test_errors_go_and_tables_show_it_only_where_they_do(tmp_path):
    from allnc.metrics import headward_errors
    from allnc.report.results import result_record

    run = tmp_path / "run"
    run.mkdir()
    conf, counts = [[8, 1, 1, 0], [3, 5, 1, 1], [2, 2, 4, 2], [4, 1, 0, 5]], [500, 200, 50, 10]
    cfg = {"seed": 0, "data": {"imbalance_factor": 100}, "train": {"epochs": 12}}
    (run / "metrics.json").write_text(json.dumps({"top1": 55.0, "groups": {"many": 65.0}, "config": cfg, "epoch": 12,
                                                  "confusion": conf, "class_counts": counts}))
    (run / "posthoc_tau_norm.json").write_text(json.dumps(
        {"method": "tau_norm", "tau": 1.0, "test": {"top1": 60.0, "groups": {"many": 60.0}}, "run_test": {"top1": 55.0}}))
    own = result_record(run, "cifar10_lt_ce__if100__e12__seed0")
    hw = headward_errors(conf, counts)
    assert own["errors"] == {"errors": 18, "headward": hw["all"], "headward_if_even": hw["uniform"],
                             "headward_by_group": hw["groups"]}
    # a post-hoc cell's classifier is another one: the run's errors are not its
    assert "errors" not in result_record(run, "cifar10_lt_ce__if100__e12__seed0__posthoc_tau_norm")
    # the columns appear where every trained run has the figures: mean ± std over seeds, (the
    # even-spread mean); a post-hoc cell has neither and does not hold them back
    recs = [_rec("cifar10_lt_ce", s, 70.0, 88.0, 40.0) for s in (0, 1)]
    assert "head-ward" not in render_table(recs)
    recs[0].update(errors={"headward": 60.0, "headward_if_even": 50.0}, ece=4.0)
    assert "head-ward" not in render_table(recs) and "ECE" not in render_table(recs)  # seed 1 lacks them
    recs[1].update(errors={"headward": 70.0, "headward_if_even": 51.0}, ece=6.0)
    posthoc = dict(_rec("cifar10_lt_ce", 0, 75.0, 85.0, 60.0), cell=recs[0]["cell"] + "__posthoc_tau_norm")
    text = render_table(recs + [posthoc])
    assert "| cos mu medium | ECE % | head-ward errors % (even) | wall s |" in text
    assert "| 5.00 ± 1.41 | 65.00 ± 7.07 (50.5) | 10 |" in text and "| – | – | 10 |" in text
