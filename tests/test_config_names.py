"""Every built-in config name users know keeps its meaning: it resolves to exactly the config
that its YAML file gave before the configs were composed from fragments (the fixture was
written from those files: key by key, the defaults plus what each file changed)."""
import json
from pathlib import Path

import pytest

from allnc.config import builtin_names, flatten, load_config, to_dict

FIXTURE = json.loads((Path(__file__).parent / "data" / "builtin_configs_before_composition.json").read_text())

# deliberate changes since the fixture was written, each with its reason; everything else must
# be as it was. The method study (docs/study_fmnist.md) picked AllNC's free choices on a
# validation split, and each dataset's validation-chosen baseline settings live in its
# fragment's _methods_ section (Fashion-MNIST so far).
ALLNC_DEFAULTS = {"method.gbbn.sampler": "balanced", "method.gbbn.inference_mix": "auto", "method.hycon.centre": True,
                  "method.hycon.anchors": "both", "method.p2p.equinorm": 1.0,
                  "method.gbbn.mix_scale": 2.0}  # chosen again after the HyCon fix (trials --only allnc)
FMNIST_CHOSEN = {
    "fmnist_lt_crt": {"train.epochs": 8, "train.lr": 0.1},
    "fmnist_lt_ldam_drw": {"method.ldam.max_margin": 0.3},
    "fmnist_lt_etf_dr": {"train.mixup": 0.0},
    "fmnist_lt_bcl": {"method.bcl.tau": 0.07, "method.bcl.lambda_scl": 0.35},
    "fmnist_lt_bbn": {"method.gbbn.sampler": "balanced", "method.gbbn.inference_mix": "auto"},
}


# the released recipes, checked against each baseline's official code (docs/baselines.md)
BCL_RELEASED = {"method.bcl.tau": 0.07, "method.bcl.lambda_ce": 1.0, "method.bcl.lambda_scl": 0.35,
                "method.bcl.proj_dim": 1024, "train.warmup_epochs": 0, "method.bcl.ce_augment": "randaug"}
RELEASED = {
    "cifar10_lt_etf_dr": {"train.lr_decay": 0.1}, "cifar100_lt_etf_dr": {"train.lr_decay": 0.1},
    "imagenet_lt_etf_dr": {"train.mixup": 0.2, "train.warmup_epochs": 0, "train.batch_size": 1024,
                           "data.augment": "jitter"},
    "imagenet_lt_bcl": BCL_RELEASED, "inat2018_bcl": {**BCL_RELEASED, "train.lr": 0.2, "train.epochs": 100},
    # cRT's released re-training: colour jitter on ImageNet-LT and Places-LT (there at lr 0.1),
    # iNaturalist's own statistics and 30 epochs
    "imagenet_lt_crt": {"data.augment": "jitter"}, "places_lt_crt": {"data.augment": "jitter", "train.lr": 0.1},
    "inat2018_crt": {"data.mean": [0.466, 0.471, 0.380], "data.std": [0.195, 0.194, 0.192], "train.epochs": 30},
}
# defaults of every config that now follow the released code: cRT's class-aware sampler
RELEASED_DEFAULTS = {"method.crt.sampler": "class_aware"}


def changed_since_fixture(name: str) -> dict:
    out = dict(RELEASED_DEFAULTS)
    name = name.removesuffix("_strong")
    if "_allnc" in name or name.endswith(("_gbbn_only",)):
        out.update(ALLNC_DEFAULTS)
    if name.endswith("_ce_hycon"):
        out["method.hycon.centre"] = True
    if name.endswith("_ce_p2p"):
        out["method.p2p.equinorm"] = 1.0
    out.update(FMNIST_CHOSEN.get(name, {}))
    out.update(RELEASED.get(name, {}))
    return out


def test_every_old_name_is_still_a_builtin():
    assert set(FIXTURE["configs"]) <= set(builtin_names())


@pytest.mark.parametrize("name", sorted(FIXTURE["configs"]))
def test_old_name_resolves_to_the_same_config(name):
    got = flatten(to_dict(load_config(name)))
    want = {**FIXTURE["defaults"], **FIXTURE["configs"][name], **changed_since_fixture(name)}
    missing = sorted(set(want) - set(got))
    assert not missing, f"keys gone: {missing[:5]}"
    diff = {k: (want[k], got[k]) for k in want if got[k] != want[k]}
    assert not diff, f"{name}: {diff}"
