"""The chart program generator: seeded, disjoint splits, compilable code."""

from mmpost.data.charts import HELDOUT_SEED_OFFSET, chart_program, split_seeds


def test_generator_is_seeded_and_splits_disjoint():
    assert chart_program(7) == chart_program(7)
    assert set(split_seeds("train", 4000)).isdisjoint(split_seeds("heldout", 100))
    assert split_seeds("heldout", 3)[0] == HELDOUT_SEED_OFFSET
    compile(chart_program(123)["code"], "<gen>", "exec")
