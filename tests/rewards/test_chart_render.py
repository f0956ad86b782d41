"""chart_render components on hand-built figures, executed through the real sandbox."""

import pytest

from mmpost.rewards.chart_render import (color_similarity, extract_code, f1, multiset_f1, series_similarity,
                                         text_score)

BASE = """import matplotlib.pyplot as plt
x = [1, 2, 3, 4]
plt.plot(x, [1, 5, 2, 8], color='red', label='A')
plt.plot(x, [3, 3, 4, 1], color='blue', label='B')
plt.legend()
plt.title('Monthly Sales')
plt.xlabel('Month')
plt.ylabel('Value')
"""


def score(reward, gen, gold=BASE):
    out = reward(["p"], [f"```python\n{gen}```"], code=[gold])
    return out[0], {k: v[0] for k, v in out.components.items()}


def test_identical_is_one(chart_reward):
    total, parts = score(chart_reward, BASE)
    assert total == pytest.approx(1.0)
    assert all(parts[k] == pytest.approx(1.0) for k in ("type", "text", "layout", "color", "data", "ssim", "exec"))


def test_changed_color_lowers_color_only(chart_reward):
    _, parts = score(chart_reward, BASE.replace("color='red'", "color='green'"))
    assert parts["color"] < 0.95
    assert parts["type"] == parts["text"] == parts["data"] == parts["layout"] == pytest.approx(1.0)


def test_missing_series_lowers_data_only_among_semantic_parts(chart_reward):
    gen = BASE.replace("plt.plot(x, [3, 3, 4, 1], color='blue', label='B')\n", "")
    _, parts = score(chart_reward, gen)
    # one of two series: data F1 = 2*1*0.5/1.5 = 2/3; type and colour lose the same series
    assert parts["data"] == pytest.approx(2 / 3, abs=1e-6)
    assert parts["layout"] == pytest.approx(1.0)


def test_changed_values_graded(chart_reward):
    near, _ = score(chart_reward, BASE.replace("[1, 5, 2, 8]", "[1, 5, 2, 7]"))
    far, _ = score(chart_reward, BASE.replace("[1, 5, 2, 8]", "[8, 1, 8, 1]"))
    assert 1.0 > near > far


def test_changed_title_lowers_text(chart_reward):
    _, parts = score(chart_reward, BASE.replace("Monthly Sales", "Weekly Costs"))
    assert parts["text"] == pytest.approx(f1(4, 5, 5))  # 4 of 5 texts (title, 2 labels, 2 legend) match
    assert parts["data"] == pytest.approx(1.0)


def test_layout_of_subplots(chart_reward):
    gold = "import matplotlib.pyplot as plt\nfig, axes = plt.subplots(1, 2)\naxes[0].bar([1, 2], [3, 4])\n"
    gen = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar([1, 2], [3, 4])\n"
    _, parts = score(chart_reward, gen, gold)
    assert parts["layout"] == 0.0
    assert parts["type"] == pytest.approx(1.0)


def test_failures_score_zero_and_bad_reference_is_none(chart_reward):
    assert score(chart_reward, "raise ValueError('boom')\n")[0] == 0.0
    assert score(chart_reward, "x = 1\n")[0] == 0.0  # no figure
    assert chart_reward(["p"], ["no code at all"], code=[BASE])[0] == 0.0
    out = chart_reward(["p"], [f"```python\n{BASE}```"], code=["raise RuntimeError('broken gold')"])
    assert out[0] is None


def test_chart_kinds_are_recognised(chart_reward):
    from mmpost.data.charts import CHART_TYPES, chart_program

    seen = {}
    for seed in range(200):
        program = chart_program(seed)
        seen.setdefault(program["chart_type"], program["code"])
    assert set(seen) == set(CHART_TYPES)
    for kind, code in seen.items():
        total, parts = score(chart_reward, code, code)
        assert total == pytest.approx(1.0), kind
    # a histogram drawn as bars is a different chart type
    _, parts = score(chart_reward, seen["bar"], seen["hist"])
    assert parts["type"] == 0.0


def test_pure_helpers_by_hand():
    assert f1(1, 2, 1) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1(0, 0, 0) == 1.0
    assert multiset_f1(["bar", "bar", "line"], ["bar", "line", "line"]) == pytest.approx(2 / 3)
    assert text_score(["Monthly  Sales"], ["monthly sales"]) == 1.0
    sim = color_similarity(["#ff0000"], ["#ff0000", "#0000ff", "#ffa500"])
    # red vs blue: dE2000 52.9 > 50 -> 0; red vs orange: dE2000 33.75 -> 1 - 33.75 / 50
    assert sim[0, 0] == pytest.approx(1.0) and sim[0, 1] == 0.0 and sim[0, 2] == pytest.approx(0.325, abs=0.002)
    same = {"kind": "line", "y": [1.0, 2.0, 3.0]}
    assert series_similarity(same, same) == 1.0
    # resampled |diff| = 1 everywhere on a range-2 gold: shape 0.5; same count
    assert series_similarity({"kind": "line", "y": [2.0, 3.0, 4.0]}, same) == pytest.approx(0.5)
    # half the points: count factor 0.5 (shape of a 1-point series vs its own value range)
    assert series_similarity({"kind": "bar", "y": [1.0]}, {"kind": "bar", "y": [1.0, 1.0]}) == pytest.approx(0.5)
    assert series_similarity({"kind": "bar", "y": [1.0]}, {"kind": "line", "y": [1.0]}) == 0.0


def test_extract_code():
    assert extract_code("text\n```python\na = 1\n```\nmore ```python\nb = 2\n```") == "b = 2"
    assert extract_code("plain = 1") == "plain = 1"
    assert extract_code("```python\nunterminated = 1\n") == "unterminated = 1"
