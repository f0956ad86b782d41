"""The registries: unknown names suggest the closest, rewards register by decorator or from a file."""

import pytest

import mmpost
from mmpost.registry import REWARDS, TASKS, load_reward_file


def test_unknown_names_suggest():
    with pytest.raises(KeyError, match="Did you mean 'chart2code'"):
        TASKS.get("chart2cod")
    with pytest.raises(KeyError, match="Did you mean 'chart_render'"):
        mmpost.build_config("chart2code", rewards=["chart_rendr"])


def test_reward_decorator_and_file(tmp_path):
    @mmpost.reward("test_words")
    def words(prompts, completions, **columns):
        return [float(len(c.split())) for c in completions]

    assert REWARDS.get("test_words") is words
    file = tmp_path / "my_rewards.py"
    file.write_text("def count_chars(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    name = load_reward_file(f"{file}:count_chars")
    assert name == "count_chars" and REWARDS.get(name)(["p"], ["abc"]) == [3.0]
    with pytest.raises(AttributeError):
        load_reward_file(f"{file}:missing")
