"""The choice-accuracy parser and reward (audio_qa, video_qa)."""

import pytest

from mmpost.rewards.choice import choice_accuracy, chosen_option


CHOICES = ["the first", "the second"]


@pytest.mark.parametrize("completion, picked", [
    ("<answer>the second</answer>", "the second"),
    ("<answer> The Second. </answer>", "the second"),  # case, spaces and a final period do not matter
    ("<answer>B</answer>", "the second"),
    ("<answer>(B)</answer>", "the second"),
    ("<answer>(B) the second</answer>", "the second"),
    ("<answer>(B) the first</answer>", None),  # the letter and the text disagree
    ("<answer>(C)</answer>", None),  # no option C
    ("<answer>the first</answer><answer>the second</answer>", "the second"),  # the last answer counts
    ("the second", "the second"),  # no tags: the whole completion
    ("", ""),
])
def test_chosen_option_edge_cases(completion, picked):
    assert chosen_option(completion, CHOICES) == picked


def test_lowercase_options_are_not_letters():
    # the vowel options a / i / u must not be read as letter A / I / U
    assert chosen_option("<answer>a</answer>", ["i", "u", "a"]) == "a"
    assert chosen_option("<answer>A</answer>", ["i", "u", "a"]) == "i"
    assert chosen_option("<answer>a chord</answer>", ["a single tone", "a chord"]) == "a chord"


def test_choice_accuracy_trl_signature():
    completions = ["<answer>the second</answer>", "<answer>A</answer>", "<answer>maybe</answer>",
                   [{"role": "assistant", "content": "<answer>B</answer>"}]]
    assert choice_accuracy(["q"] * 4, completions, answer=["the second"] * 4, choices=[CHOICES] * 4) == [
        1.0, 0.0, 0.0, 1.0]
    assert choice_accuracy(["q"], ["<answer>3</answer>"], answer=["3"]) == [1.0]  # no choices column: text only
