"""Every task that declares an out-of-distribution split (its ``ood`` member) holds there only what
training never shows, from seeds no other split draws."""

import pytest

import mmpost
from mmpost.data.splits import split_seeds
from mmpost.types import task_member

def _chart_points(row) -> bool:
    """More data than a training chart holds (the longest literal list in its code)."""
    import re

    longest = max(len(m.split(",")) for m in re.findall(r"\[([^\]]*)\]", row["code"]))
    return longest > (16 if "hist(" in row["code"] else 8 if "pie(" not in row["code"] else 5)


def _small_shapes(row) -> bool:
    from mmpost.data.motion import OOD_SIZES, video

    split = "ood" if row["seed"] >= 20_000_000 else "heldout" if row["seed"] >= 10_000_000 else "train"
    return all(track["size"] <= OOD_SIZES[1] for track in video(row["seed"], split)["tracks"])


def _unseen_pair(row) -> bool:
    from mmpost.data.objects3d import UNSEEN_PAIRS, object_spec

    parts = object_spec(row["seed"])["parts"]
    return (parts[0]["shape"], parts[0]["color"]) in UNSEEN_PAIRS and row["description"].startswith(
        f"{'an' if parts[0]['color'] == 'orange' else 'a'} {parts[0]['color']} {parts[0]['shape']}")


# task -> what marks an OOD row, checked on the rows of each split
MARK = {
    "chart2code": _chart_points,
    "video_qa": _small_shapes,
    "arithmetic": lambda row: row["operations"] == 4,
    "grounding": lambda row: row["novel"],
    "audio_qa": lambda row: row["shifted"],
    "reach": lambda row: row["instruction"].startswith("go to the"),  # the held-out phrasing
    "multiview3d": _unseen_pair,
}


def test_ood_seeds_are_disjoint_from_train_and_heldout():
    ood = set(split_seeds("ood", 1000))
    assert not ood & set(split_seeds("train", 1000)) and not ood & set(split_seeds("heldout", 1000))


@pytest.mark.parametrize("name", sorted(MARK))
def test_ood_rows_are_all_out_of_distribution(name, mmpost_home):
    task_cls = mmpost.TASKS.get(name)
    assert task_member(task_cls, "ood"), f"{name} declares no ood split"
    from mmpost.engine import build_task

    task = build_task(mmpost.build_config(name, overrides={"data.eval_size": 20, "data.train_size": 40,
                                                            "sandbox_workers": 1}))[0]
    assert all(MARK[name](row) for row in task.rows("ood"))
    heldout = [MARK[name](row) for row in task.rows("heldout")]
    assert any(heldout) or name in ("arithmetic", "chart2code", "video_qa", "multiview3d")  # some tasks' held-out mixes some in
    if name == "reach":  # training episodes carry no instruction row field; their specs never use the phrasing
        from mmpost.envs.reach import episode_spec

        assert not any(episode_spec(r["seed"])["instruction"].startswith("go to the") for r in task.rows("train"))
    else:
        assert not any(MARK[name](row) for row in task.rows("train"))


@pytest.mark.parametrize("name", sorted(MARK))
def test_validation_rows_are_unseen_rows_of_the_training_distribution(name, mmpost_home):
    """``eval.split=validation`` chooses settings on rows no split shares, drawn as training rows are."""
    from mmpost.engine import build_task

    cfg = mmpost.build_config(name, overrides={"data.eval_size": 20, "data.train_size": 40, "sandbox_workers": 1,
                                               "eval.split": "validation"})
    task = build_task(cfg)[0]
    rows = task.rows("validation")
    assert len(rows) == 20 and not any(MARK[name](row) for row in rows if name != "reach")
    seeds = set(split_seeds("validation", 20))
    assert not seeds & set(split_seeds("heldout", 20)) and not seeds & set(split_seeds("train", 40))


def test_a_user_file_has_no_ood_split(tmp_path, mmpost_home):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "1+1?", "solution": "1+1=2\\n#### 2", "answer": "2"}\n' * 4)
    task = mmpost.TASKS.get("arithmetic")(mmpost.build_config("arithmetic", overrides={"data.path": str(data)}))
    for split in ("ood", "validation"):
        with pytest.raises(ValueError, match=f"has no '{split}' split"):
            task.rows(split)
