"""Data mixtures (DMT): the mixed rows by hand, and the stage's mix setting checked."""


def test_mixed_rows_by_hand():
    """DMT's mixture: the stage's rows plus round(k * |split|) rows of each mixed split, seeded."""
    from mmpost.data_hooks.mixing import mixed_rows

    general = [{"id": f"g{i}"} for i in range(10)]
    specialist = [{"id": f"s{i}"} for i in range(64)]
    out = mixed_rows(general, {"math": specialist}, {"math": 1 / 16}, seed=0)
    assert out[:10] == general and len(out) == 10 + 4  # 64 / 16 = 4 specialist rows
    assert {r["id"] for r in out[10:]} <= {r["id"] for r in specialist} and len({r["id"] for r in out[10:]}) == 4
    assert out == mixed_rows(general, {"math": specialist}, {"math": 1 / 16}, seed=0)  # same seed, same rows
    assert out != mixed_rows(general, {"math": specialist}, {"math": 1 / 16}, seed=1)
    assert len(mixed_rows(general, {"math": specialist}, {"math": 1 / 256}, seed=0)) == 11  # at least one
    assert len(mixed_rows(general, {"math": specialist}, {"math": 0.0}, seed=0)) == 10
    assert len(mixed_rows(general, {"math": specialist}, {"math": 1.0}, seed=0)) == 74  # plain multi-task


def test_mix_config_is_checked():
    import pytest

    from mmpost.stages.spec import Rows, Stage

    with pytest.raises(ValueError, match="mix maps split names"):
        Stage(rows=Rows(mix={"three_step": 2.0}))
