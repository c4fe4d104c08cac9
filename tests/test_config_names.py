"""Every built-in config name users know keeps its meaning: it resolves to exactly the config
that its YAML file gave before the configs were composed from fragments (the fixture was
written from those files: key by key, the defaults plus what each file changed)."""
import json
from pathlib import Path

import pytest

from allnc.config import builtin_names, flatten, load_config, to_dict

FIXTURE = json.loads((Path(__file__).parent / "data" / "builtin_configs_before_composition.json").read_text())


def test_every_old_name_is_still_a_builtin():
    assert set(FIXTURE["configs"]) <= set(builtin_names())


@pytest.mark.parametrize("name", sorted(FIXTURE["configs"]))
def test_old_name_resolves_to_the_same_config(name):
    got = flatten(to_dict(load_config(name)))
    want = {**FIXTURE["defaults"], **FIXTURE["configs"][name]}
    missing = sorted(set(want) - set(got))
    assert not missing, f"keys gone: {missing[:5]}"
    diff = {k: (want[k], got[k]) for k in want if got[k] != want[k]}
    assert not diff, f"{name}: {diff}"
