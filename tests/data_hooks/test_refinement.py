"""Middo's diagnosis and rewriting against its definitions, and a round inside a real SFT run."""

import json

import pytest
import torch

from mmpost.data_hooks.refinement import complexity_flags, low_quality_flags, refined_dataset, sparse_flags


def test_complexity_needs_high_loss_before_and_after():
    # start losses [1, 1, 1, 5]: mean 2, std sqrt(3) -> above 3.73: row 3; now [1, 1, 4, 4]: mean 2.5,
    # std 1.5 -> above 4.0: none strictly; now [1, 1, 1, 6]: row 3 again -> flagged in both
    start = torch.tensor([1.0, 1.0, 1.0, 5.0])
    assert complexity_flags(start, torch.tensor([1.0, 1.0, 4.0, 4.0])).tolist() == [False] * 4
    assert complexity_flags(start, torch.tensor([1.0, 1.0, 1.0, 6.0])).tolist() == [False, False, False, True]


def test_sparse_rows_have_few_close_neighbours():
    # three rows along x, two along y, one alone at (-1, -1): its 2 nearest cosines are the lowest
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.0, 1.0], [0.1, 1.0], [-1.0, -1.0]])
    flags, nearest = sparse_flags(embeddings, m=1.0)
    assert flags.tolist() == [False] * 5 + [True]
    assert nearest[5] == pytest.approx(float(torch.nn.functional.cosine_similarity(
        embeddings[5:], embeddings[[0, 3]]).mean()), abs=0.2)  # it sits between the two clusters


def test_low_quality_by_hand():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0])  # mean 0.75, sample std 0.5 -> below 0.25
    assert low_quality_flags(scores, 1.0).tolist() == [False, False, False, True]
    assert not low_quality_flags(torch.ones(4), 1.0).any()  # all equally good: nothing flagged


def test_refined_dataset_keeps_its_size():
    rows = [{"id": i} for i in range(6)]
    flags = {"complexity": torch.tensor([1, 0, 0, 0, 0, 0]).bool(), "diversity": torch.tensor([0, 0, 0, 0, 1, 0]).bool(),
             "quality": torch.tensor([0, 0, 1, 0, 0, 0]).bool()}
    # no rewriter: the low-quality row 2 leaves, the isolated row 4 is copied into its place
    out, counts = refined_dataset(rows, flags, None, seed=0)
    assert sorted(out) == [0, 1, 3, 4, 4, 5] and counts == {"rewritten": 0, "dropped": 1, "added": 1}

    def refine(row, axis, rng):
        return {"id": f"{axis}-{row['id']}"}

    out, counts = refined_dataset(rows, flags, refine, seed=0)
    assert len(out) == 6 and counts == {"rewritten": 2, "dropped": 0, "added": 1}
    assert out[0] == {"id": "complexity-0"} and out[2] == {"id": "quality-2"}
    assert {"id": "diversity-4"} in out and 4 in out  # the isolated row stays and gains a neighbour
    assert sum(isinstance(e, int) and e in (1, 3, 5) for e in out) == 2  # an unflagged row made room


def test_middo_round_in_sft_rewrites_and_resumes(mmpost_home, tmp_path):
    """Two rounds in a 5-step SFT run on arithmetic with some corrupted demonstrations: the corrupt
    rows are flagged by the reward on their own demonstration and repaired; the refined data is in
    the checkpoint, so a run resumed from step 4 ends with the same weights."""
    import mmpost
    from safetensors.torch import load_file

    from mmpost.engine import train

    def config(out):
        return mmpost.build_config("arithmetic", recipe="sft", output_dir=str(out), overrides={
            "data.train_size": 24, "data.eval_size": 4, "threads": 1, "eval.sampled": False, "sft.steps": 5,
            "sft.batch_size": 8, "sft.rows.middo": [2, 1.0], "checkpoint_every": 2, "data.noise": 0.125})

    train(config(tmp_path / "full"))
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[2]["middo/quality"] == 3.0 and "middo/diversity" in lines[2]  # the 3 corrupted rows
    assert lines[4]["middo/quality"] == 0.0  # repaired in the first round; the second reads rewritten rows
    state = torch.load(sorted((tmp_path / "full" / "checkpoints").iterdir())[-1] / "state.pt", weights_only=False)
    refined = state["stage_state"]["refined_rows"]
    assert len(refined) == 24 and sum(isinstance(e, dict) for e in refined) >= 3
    from mmpost.rewards.answer import extract_answer

    rows = [e for e in refined if isinstance(e, dict)]
    assert all(extract_answer(r["completion"]) == r["answer"] for r in rows)  # repaired demonstrations
    train(config(tmp_path / "resumed"))
    import shutil

    shutil.rmtree(sorted((tmp_path / "resumed" / "checkpoints").iterdir())[-1])
    shutil.rmtree(tmp_path / "resumed" / "final")
    mmpost.train(resume=str(tmp_path / "resumed"))
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
