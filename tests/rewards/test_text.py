"""Text rewards (length, code block, think/answer format) by hand."""

from mmpost.rewards.text import answer_format, code_block, length, think_format


def test_text_rewards_by_hand():
    assert length(["p"], ["abcd"], target=8) == [0.5]
    assert length(["p"], [[{"role": "assistant", "content": "x" * 300}]]) == [1.0]  # conversational, capped
    assert code_block(["p", "p"], ["```python\nx = 1\n```", "x = 1"]) == [1.0, 0.0]


def test_format_rewards():
    assert think_format(["p"] * 5, ["<think>x</think><answer>y</answer>", "<think>x</think>\n <answer>y</answer>",
                                    "<answer>y</answer>", "<think>x</think><answer>y</answer> extra",
                                    "<think>x<answer>y</answer>"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert answer_format(["p"] * 4, ["<answer>A</answer>", " <answer>A</answer>\n", "<answer>A",
                                     "<think>t</think><answer>A</answer>"]) == [1.0, 1.0, 0.0, 0.0]
