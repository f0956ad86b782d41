"""Keys of the flat stage of before the redesign: refused with their new place everywhere a user
types them, and still read from a run's saved ``config.yaml`` (resume)."""

import json
from pathlib import Path

import pytest
import yaml

import mmpost
from mmpost.config import apply_overrides, load_run_config, stages_from_yaml
from mmpost.stages.spec import RENAMED
from tests.e2e.test_redesign_parity import DEFAULT_CHANGED

BASELINE = Path(__file__).resolve().parent
while not (BASELINE / "fixtures").is_dir():
    BASELINE = BASELINE.parent
BASELINE = BASELINE / "fixtures" / "redesign"


def test_old_override_keys_name_their_new_place():
    cfg = mmpost.build_config("arithmetic")
    for old, new in [("rl.kl_coef", "rl.kl.coef"), ("rl.lr", "rl.optim.lr"), ("sft.sft_weight", "sft.demo_loss.weight"),
                     ("rl.advantage", "rl.advantage.estimator"), ("stages.rl.group_size", "stages.rl.sampling.group_size")]:
        with pytest.raises(KeyError, match=f"is now '{new}'"):
            apply_overrides(cfg, {old: "1"})


def test_old_yaml_recipe_keys_name_their_new_place(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"name": "rl", "kind": "rl", "kl_coef": 0.04}]}))
    with pytest.raises(KeyError, match="'kl_coef' is now 'kl.coef'"):
        stages_from_yaml(recipe)
    recipe.write_text(yaml.safe_dump({"stages": [{"name": "rl", "kind": "rl", "kl": {"coef": 0.04}}]}))
    assert stages_from_yaml(recipe)[0].kl.coef == 0.04


@pytest.mark.parametrize("key", ["arithmetic:default", "arithmetic:reft", "chart2code:chord_mu", "reach:default",
                                 "arithmetic:dmt", "multiview3d:carve3d"])
def test_a_config_yaml_saved_before_the_redesign_still_loads(key, tmp_path):
    """A run directory's config.yaml as the old code wrote it resolves to today's config of the same
    task and recipe (what --resume reads)."""
    old = json.loads((BASELINE / "configs_before.json").read_text())[key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    task, recipe = key.split(":")
    expected = mmpost.build_config(task, recipe=None if recipe == "default" else recipe)
    for stage in expected.stages:  # a saved run keeps the values it ran with where a default changed since
        for old_name, (before, _) in DEFAULT_CHANGED.items():
            section, _, field = RENAMED[old_name].partition(".")
            setattr(getattr(stage, section), field, before)
    assert load_run_config(tmp_path).to_dict() == expected.to_dict()
