import pytest

from mmpost.config import apply_overrides, parse_set, stages_from_yaml
from mmpost.tasks.chart2code import Chart2Code


def test_overrides_by_stage_name_and_section():
    cfg = Chart2Code.default_config()
    apply_overrides(cfg, parse_set(["rl.sampling.group_size=4", "stages.sft.optim.lr=5e-4", "data.train_size=10", "seed=3"]))
    assert cfg.stage("rl").sampling.group_size == 4 and cfg.stage("sft").optim.lr == 5e-4
    assert cfg.data.train_size == 10 and cfg.seed == 3


def test_unknown_key_suggests_closest():
    cfg = Chart2Code.default_config()
    with pytest.raises(KeyError, match="Did you mean 'sampling.group_size'"):
        apply_overrides(cfg, {"rl.grop_size": "4"})
    with pytest.raises(KeyError, match="Did you mean 'train_size'"):
        apply_overrides(cfg, {"data.trian_size": "4"})


def test_bad_values_rejected():
    cfg = Chart2Code.default_config()
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(cfg, {"rl.sampling.group_size": "many"})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set(["rl.sampling.group_size"])
    with pytest.raises(ValueError, match="Did you mean .dpo."):
        apply_overrides(cfg, {"sft.kind": "dpoo"})


def test_recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("stages:\n  - {name: warm, kind: sft, steps: 5}\n  - {name: grpo, kind: rl, steps: 2}\n")
    assert [s.name for s in stages_from_yaml(path)] == ["warm", "grpo"]
    path.write_text("stages:\n  - {name: warm, kind: sft, stpes: 5}\n")
    with pytest.raises(KeyError, match="Did you mean 'steps'"):
        stages_from_yaml(path)


def test_reward_weights_from_the_command_line_become_numbers():
    import mmpost

    cfg = mmpost.build_config("multiview3d", overrides={"rewards": "mrc,object_match", "reward_weights": "1,0.1"})
    assert cfg.rewards == ["mrc", "object_match"] and cfg.reward_weights == [1.0, 0.1]
    with pytest.raises(ValueError, match="must be numbers"):
        mmpost.build_config("multiview3d", overrides={"rewards": "mrc", "reward_weights": "heavy"})


def test_overrides_across_a_stages_sections_do_not_depend_on_their_order():
    """A stage's checks across sections run once every override is in: a batch of 2 with 1 minibatch is fine
    whichever is set first; a batch of 3 with 4 minibatches is refused."""
    import mmpost

    for overrides in ({"rl.batch_size": "2", "rl.pg.minibatches": "1"}, {"rl.pg.minibatches": "1", "rl.batch_size": "2"}):
        cfg = mmpost.build_config("maniskill", overrides=overrides)
        assert (cfg.stage("rl").batch_size, cfg.stage("rl").pg.minibatches) == (2, 1)
    with pytest.raises(ValueError, match="pg.minibatches must divide"):
        mmpost.build_config("maniskill", overrides={"rl.batch_size": "3"})


def test_token_policy_knobs_are_refused_for_a_flow_policy():
    """padding_free and attn_implementation are token-policy settings: a flow task names them and fails."""
    import pytest

    import mmpost

    for override in ({"padding_free": True}, {"attn_implementation": "eager"}):
        with pytest.raises(ValueError, match=f"{next(iter(override))}.*FlowActionPolicy"):
            mmpost.build_config("reach", overrides=override)
        mmpost.build_config("chart2code", overrides=override)  # a token policy takes them
