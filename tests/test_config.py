import pytest
from omegaconf import OmegaConf

from allnc.config import builtin_names, flatten, load_config, parse_override, to_dict
from allnc.errors import ConfigError


def test_override_changes_only_that_key():
    base = load_config("cifar10_lt_ce")
    cfg = load_config("cifar10_lt_ce", ["train.epochs=7", "data.root=/x/y", "train.milestones=[3,5]"])
    assert cfg.train.epochs == 7 and cfg.data.root == "/x/y" and list(cfg.train.milestones) == [3, 5]
    assert cfg.train.lr == base.train.lr and cfg.model.name == "resnet32"


def test_unknown_key_names_it_and_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*did you mean 'train.epochs'"):
        load_config("fmnist_lt_ce", ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"'data.imbalance_factr'.*'data.imbalance_factor'"):
        load_config(None, ["data.imbalance_factr=10"])
    # a section given whole: the unknown key inside it is named, at any depth
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*did you mean 'train.lr'"):
        load_config("fmnist_lt_ce", ["train={lr: 0.2, lrr: 2}"])
    with pytest.raises(ConfigError, match=r"'method.hycon.weigth'.*did you mean 'method.hycon.weight'"):
        load_config("fmnist_lt_allnc", ["method={hycon: {weigth: 0.2}}"])
    assert load_config("fmnist_lt_ce", ["train={lr: 0.2}"]).train.lr == 0.2


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("_base_: fmnist_lt_ce\nmodel:\n  widht: 32\n")
    with pytest.raises(ConfigError, match=r"model.widht.*exp.yaml.*model.width"):
        load_config(str(p))


def test_imbalance_factor_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"imbalance_factor=0.5 is outside \[1, inf\) \(it is n_max/n_min"):
        load_config("fmnist_lt_ce", ["data.imbalance_factor=0.5"])


def test_bad_choice_and_bad_type():
    with pytest.raises(ConfigError, match="method.gbbn.schedule='parabola' is not one of"):
        load_config("fmnist_lt_bbn", ["method.gbbn.schedule=parabola"])
    with pytest.raises(ConfigError, match="bad value 'abc' for 'train.epochs'"):
        load_config("fmnist_lt_ce", ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_override("train.epochs")


def test_base_chain_applies_parent_then_child(tmp_path):
    (tmp_path / "parent.yaml").write_text("_base_: cifar10_lt\ntrain:\n  epochs: 11\n  lr: 0.05\n")
    (tmp_path / "child.yaml").write_text("_base_: parent\ntrain:\n  epochs: 3\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.name) == (3, 0.05, "cifar10")


def test_missing_config_suggests_builtin():
    with pytest.raises(ConfigError, match="did you mean 'cifar10_lt_ce'"):
        load_config("cifar10_lt_cee")


def test_every_builtin_config_loads_and_follows_its_protocol():
    names = builtin_names()
    datasets = ["fmnist_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018", "places_lt"]
    methods = ["ce", "la", "bsce", "ldam_drw", "etf_dr", "etf_ce", "bcl", "bbn", "allnc", "ce_hycon", "ce_p2p",
               "gbbn_only", "allnc_no_hycon", "allnc_no_p2p", "allnc_no_centre", "crt", "ce_mixup", "mislas", "glmc", "paco", "maxnorm",
               "glmc_maxnorm"]
    for ds in datasets:
        for m in methods:
            # GLMC released no Places-LT recipe (nor, so, GLMC's second stage)
            places_less = ("glmc", "glmc_maxnorm")
            assert (f"{ds}_{m}" in names) != (ds == "places_lt" and m in places_less), (ds, m)
    for n in names:
        cfg = load_config(n)
        # every schedule fits: the warm-up ends and every step decay happens inside the run
        assert cfg.train.warmup_epochs < cfg.train.epochs, n
        if cfg.train.schedule == "step":
            assert all(0 < m < cfg.train.epochs for m in cfg.train.milestones), n
        # the fast preset alone changes the backbone's stem, so the study's names keep their model
        assert cfg.model.stem_stride == (2 if n.endswith("_fast") else 1), n
        second_stage = n.endswith(("_crt", "_mislas", "_maxnorm"))  # their own short recipes
        if n.startswith("cifar") and not second_stage and "_glmc" not in n and "_paco" not in n:
            # the standard CIFAR-LT protocol of docs/reference.md (GLMC's own released recipe,
            # a width-64 ResNet-32 at batch 64, and PaCo's, 400 epochs, are checked in
            # tests/test_glmc.py and tests/test_paco.py)
            assert (cfg.model.name, cfg.train.epochs, cfg.train.batch_size) == ("resnet32", 200, 128), n
            # (BBN's and MiSLAS's own released schedules are the labelled exceptions)
            want = [120, 160] if n.endswith("_bbn_protocol") else [160, 180]
            decay = 0.1 if ("_ce_mixup" in n or "_etf_dr" in n) else 0.01
            assert list(cfg.train.milestones) == want and cfg.train.lr_decay == decay, n
            assert cfg.data.augment == ("strong" if n.endswith("_strong") else "standard"), n
    allnc = load_config("cifar10_lt_allnc")
    assert allnc.method.hycon.enabled and allnc.method.p2p.enabled and allnc.method.name == "gbbn"
    bbn = load_config("cifar10_lt_bbn")
    assert not bbn.method.hycon.enabled and not bbn.method.p2p.enabled
    assert (bbn.method.gbbn.sampler, bbn.method.gbbn.gamma, bbn.method.gbbn.cls_loss) == ("reversed", 2.0, "ce")
    # BBN's released iNaturalist 2018 recipe: its schedule on BBN itself
    inat = load_config("inat2018_bbn_protocol")
    t = inat.train
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.warmup_epochs, t.schedule, list(t.milestones),
            t.lr_decay) == (180, 128, 0.05, 1e-4, 0, "step", [120, 160], 0.1)
    assert inat.method.gbbn.sampler == "reversed" and inat.model.name == "resnet50"
    assert not load_config("cifar10_lt_allnc_no_hycon").method.hycon.enabled
    assert not load_config("cifar10_lt_allnc_no_p2p").method.p2p.enabled
    # the centring ablation differs from AllNC in that one key
    a, b = flatten(to_dict(load_config("cifar10_lt_allnc"))), flatten(to_dict(load_config("cifar10_lt_allnc_no_centre")))
    assert {k for k in a if a[k] != b[k]} - {"config_name", "display_name"} == {"method.hycon.centre"}
    assert a["method.hycon.centre"]


def test_on_off_stay_strings_and_true_false_are_booleans():
    cfg = load_config("fmnist_lt_ce", ["train.compile=on", "train.amp=off", "train.sync_bn=true"])
    assert (cfg.train.compile, cfg.train.amp, cfg.train.sync_bn) == ("on", "off", True)


@pytest.mark.parametrize("text,value", [("true", "true"), ("0x10", "0x10"), ("#c", "#c"), ("2024-01-01", "2024-01-01"),
                                        ("1e3", "1e3"), ("null", None), ("~", None), ("'quoted'", "quoted")])
def test_a_text_key_takes_the_text_as_written(text, value):
    """YAML would read a folder named true, 0x10, #c or 2024-01-01 as a bool, a number, a
    comment (null) or a date; a text key keeps the text, while null still clears it and
    typed keys are still read as YAML."""
    cfg = load_config("fmnist_lt_ce", [f"data.root={text}", "train.epochs=0x10"])
    assert cfg.data.root == value and cfg.train.epochs == 16


def _beside(interval: str, integer: bool) -> tuple[float, float, float | None]:
    """(a value just below the lower end, the lowest value inside, a value just above the
    upper end or None) of an interval of BOUNDS, in integer steps for an integer key."""
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    step = 1 if integer else 1e-6
    below, lowest = (lo - step, lo) if interval[0] == "[" else (lo, lo + step)
    above = None if hi == float("inf") else (hi + step if interval[-1] == "]" else hi)
    cast = int if integer else float
    return cast(below), cast(lowest), None if above is None else cast(above)


def test_every_bounded_key_exists_and_its_range_is_enforced_at_both_ends():
    from allnc.config import BOUNDS, default_config, flatten, in_interval, to_dict

    default = default_config()
    keys = flatten(to_dict(default))
    needs = {"data.small_size": ["data.name=imagefolder"]}  # a key that only some data take
    for key, interval in BOUNDS.items():
        assert key in keys, key  # a renamed key would leave its bound unchecked
        parent, _, leaf = key.rpartition(".")
        ref = (OmegaConf.select(default, parent) if parent else default)._get_node(leaf)._metadata.ref_type
        integer = int in getattr(ref, "__args__", (ref,))  # Optional[int] too
        below, lowest, above = _beside(interval, integer)
        with pytest.raises(ConfigError, match=rf"^{key}=\S+ is outside \{interval[0]}"):
            load_config("fmnist_lt_ce", [f"{key}={below!r}"])
        cfg = load_config("fmnist_lt_ce", [f"{key}={lowest!r}", *needs.get(key, [])])
        assert OmegaConf.select(cfg, key) == lowest
        if above is not None:
            with pytest.raises(ConfigError, match=rf"^{key}=\S+ is outside"):
                load_config("fmnist_lt_ce", [f"{key}={above!r}"])
    from allnc.config import key_docs

    docs = {k: meaning for k, _, meaning in key_docs()}
    assert all(docs[k].endswith(f"in {interval}") for k, interval in BOUNDS.items())  # `allnc config --keys`
    assert in_interval(0.5, "[0, 1)") and not in_interval(1, "[0, 1)") and in_interval(1, "[0, 1]")
    with pytest.raises(ConfigError, match=r"data.std=\[1.0, 0.0, 1.0\] must be positive"):
        load_config("cifar10_lt_ce", ["data.std=[1, 0, 1]"])


def test_method_override_on_a_named_config_is_refused_with_the_config_to_use(tmp_path):
    # fmnist_lt_la carries la's settings and the table name "logit adjustment"; method.name=la over
    # fmnist_lt_ce would keep CE's name and settings, so it is refused with the config to use
    with pytest.raises(ConfigError, match="--config fmnist_lt_la instead"):
        load_config("fmnist_lt_ce", ["method.name=la"])
    with pytest.raises(ConfigError, match="--config cifar10_lt_la_strong instead"):
        load_config("cifar10_lt_allnc_strong", ["method.name=la"])
    assert load_config("fmnist_lt_la").display_name == "logit adjustment"
    assert load_config("fmnist_lt_ce", ["method.name=ce"]).display_name == "CE"  # restating it is fine
    with pytest.raises(ConfigError, match="not one of"):  # a mistyped name gets the list of names
        load_config("fmnist_lt_ce", ["method.name=lx"])
    # a file over a built-in config that names another method is shown as that method
    f = tmp_path / "mine.yaml"
    f.write_text("_base_: fmnist_lt_ce\nmethod:\n  name: la\n")
    assert load_config(str(f)).display_name == "la"
    g = tmp_path / "same.yaml"
    g.write_text("_base_: fmnist_lt_ce\ntrain:\n  lr: 0.05\n")
    assert load_config(str(g)).display_name == "CE"
    with pytest.raises(ConfigError, match=r"set method.name: la in the config file.*\(_base_: fmnist_lt_la\)"):
        load_config(str(g), ["method.name=la"])


def test_every_baseline_fragment_has_its_section_in_the_baselines_page():
    """docs/baselines.md says, for each baseline, what the package computes and how it
    compares with the released code: a new method fragment that is not AllNC or one of its
    ablations must get its section there."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "baselines.md").read_text()
    ours = {"allnc", "allnc_no_hycon", "allnc_no_p2p", "allnc_no_centre", "ce_hycon", "ce_p2p", "gbbn_only"}  # docs/method.md
    fragments = {p.stem for p in (root / "src" / "allnc" / "configs" / "methods").glob("*.yaml")}
    missing = sorted(m for m in fragments - ours if f"`_{m}`" not in page)
    assert not missing, f"no section for {missing} in docs/baselines.md"
    assert ours <= fragments  # the list above names real fragments
