"""The chart program generator: seeded, disjoint splits, compilable code."""

from mmpost.data.charts import HELDOUT_SEED_OFFSET, chart_program, split_seeds


def test_generator_is_seeded_and_splits_disjoint():
    assert chart_program(7) == chart_program(7)
    assert set(split_seeds("train", 4000)).isdisjoint(split_seeds("heldout", 100))
    assert split_seeds("heldout", 3)[0] == HELDOUT_SEED_OFFSET
    compile(chart_program(123)["code"], "<gen>", "exec")


def test_generator_renders_equal_the_sandboxes():
    """The data's renders (plain workers, trusted generator programs) are the ones the sandbox makes
    of the same programs, for every chart type: features and PNG bytes."""
    from mmpost.data.charts import CHART_TYPES, render_programs
    from mmpost.rewards.chart_render import ChartRender

    programs, seed = {}, 0
    while len(programs) < len(CHART_TYPES):
        program = chart_program(seed)
        programs.setdefault(program["chart_type"], program["code"])
        seed += 1
    codes = list(programs.values())
    reward = ChartRender(workers=1)
    try:
        sandboxed = reward.execute(codes)
    finally:
        reward.sandbox.close()
    rendered = list(render_programs(codes, workers=2))
    assert len(rendered) == len(codes)
    for (features, png), (sandbox_features, _, sandbox_png) in zip(rendered, sandboxed):
        assert features == sandbox_features and png == sandbox_png


def test_a_failing_generator_program_is_named():
    import pytest

    from mmpost.data.charts import render_programs

    good = chart_program(1)["code"]
    printing = "print('noise on stdout')\n" + good
    with pytest.raises(RuntimeError, match="ZeroDivisionError") as error:
        list(render_programs([printing, good, "1 / 0\n"], workers=2))
    assert "1 / 0" in str(error.value)
    assert len(list(render_programs([printing, good], workers=2))) == 2
