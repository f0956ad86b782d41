"""LeRobot dataset folders (v2.1: a Parquet file and an MP4 per episode; v3.0: several episodes per file,
tasks.parquet) read as flow-policy demonstrations, written here the way LeRobot lays them out."""

import json

import numpy as np
import pandas as pd
import pytest

from mmpost.data.jsonl import DataError
from mmpost.data.lerobot import is_lerobot, read_lerobot

TASKS = ["pick up the cube", "push the block"]


def _episodes(lengths, state_dim=3, action_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    return [{"state": rng.normal(size=(n, state_dim)).astype(np.float32),
             "action": rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32), "task": i % 2}
            for i, n in enumerate(lengths)]


def _frame(episode: int, t: int) -> np.ndarray:
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, 4 * t:4 * t + 8] = 255  # a bright bar moving right, one step per frame
    image[:4, :4] = 60 * episode
    return image


def write_lerobot(root, episodes, version="v2.1", camera="observation.images.front"):
    """A LeRobot folder: meta/info.json, Parquet frames, tasks, and (v2.1) an MP4 per episode."""
    import av

    features = {"observation.state": {"dtype": "float32", "shape": [3]}, "action": {"dtype": "float32", "shape": [2]},
                "episode_index": {"dtype": "int64", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                "task_index": {"dtype": "int64", "shape": [1]}}
    if version == "v2.1":
        features[camera] = {"dtype": "video", "shape": [3, 32, 32]}
    info = {"codebase_version": version, "fps": 10, "chunks_size": 1000, "features": features,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    frames = [pd.DataFrame({"observation.state": list(e["state"]), "action": list(e["action"]),
                            "episode_index": i, "frame_index": range(len(e["state"])), "task_index": e["task"]})
              for i, e in enumerate(episodes)]
    if version == "v2.1":
        (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                           for i, t in enumerate(TASKS)))
        for i, frame in enumerate(frames):
            (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
            frame.to_parquet(root / "data" / "chunk-000" / f"episode_{i:06d}.parquet")
            video = root / "videos" / "chunk-000" / camera / f"episode_{i:06d}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            with av.open(str(video), "w") as container:
                stream = container.add_stream("mpeg4", rate=10)
                stream.width = stream.height = 32
                stream.pix_fmt = "yuv420p"
                for t in range(len(frame)):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(_frame(i, t), format="rgb24")))
                container.mux(stream.encode())
    else:  # v3.0: every episode in one file, task strings as the index of tasks.parquet
        pd.DataFrame({"task_index": range(len(TASKS))}, index=TASKS).to_parquet(root / "meta" / "tasks.parquet")
        (root / "data" / "chunk-000").mkdir(parents=True)
        pd.concat(frames[::-1]).to_parquet(root / "data" / "chunk-000" / "file-000.parquet")  # any row order
    return root


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_every_frame_becomes_a_row_with_the_next_actions(tmp_path, version):
    episodes = _episodes([5, 3])
    root = write_lerobot(tmp_path / "ds", episodes, version)
    assert is_lerobot(root) and not is_lerobot(tmp_path)
    rows = read_lerobot(root, horizon=4)
    assert len(rows) == 8
    assert np.array_equal(rows[1]["state"], episodes[0]["state"][1])
    assert np.array_equal(rows[1]["actions"], episodes[0]["action"][1:5])
    last = rows[4]["actions"]  # episode 0's last frame: its action, then the last action repeated
    assert np.array_equal(last, np.repeat(episodes[0]["action"][-1:], 4, axis=0))
    assert rows[0]["instruction"] == TASKS[0] and rows[5]["instruction"] == TASKS[1]


def test_camera_frames_come_from_each_episodes_video(tmp_path):
    root = write_lerobot(tmp_path / "ds", _episodes([5, 3]))
    rows = read_lerobot(root, horizon=2, columns=["image=observation.images.front"])
    for row, (episode, t) in zip(rows, [(0, t) for t in range(5)] + [(1, t) for t in range(3)]):
        assert row["image"].shape == (32, 32, 3)
        assert np.abs(row["image"].astype(float) - _frame(episode, t)).mean() < 12  # lossy codec
    with pytest.raises(DataError, match="not a camera feature.*observation.images.front"):
        read_lerobot(root, horizon=2, columns=["image=observation.state"])
    with pytest.raises(DataError, match="no feature 'obs' for state"):
        read_lerobot(root, horizon=2, columns=["state=obs"])


def test_the_flow_policy_trains_on_a_lerobot_folder(tmp_path, mmpost_home):
    """The reach task's SFT reads a LeRobot folder (data.path) written from its own expert's episodes."""
    import mmpost
    from mmpost.envs.base import expert_demonstrations

    cfg = mmpost.build_config("reach")
    rows = expert_demonstrations(cfg.env, 2, 1, 0.0, seed=0, first_episode_seed=0)
    steps = len(rows) // 2
    episodes = [{"state": np.stack([r["state"] for r in rows[i * steps:(i + 1) * steps]]),
                 "action": np.stack([r["actions"][0] for r in rows[i * steps:(i + 1) * steps]]), "task": 0}
                for i in range(2)]
    root = tmp_path / "lerobot"
    write_lerobot(root, episodes, "v3.0")
    info = json.loads((root / "meta" / "info.json").read_text())  # this env's dims
    info["features"]["observation.state"]["shape"] = [episodes[0]["state"].shape[1]]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    results = mmpost.train("reach", output_dir=str(tmp_path / "run"), threads=1, trackers=[],
                           **{"data.path": str(root), "sft.steps": 150, "rl.steps": 0, "data.eval_size": 4,
                              "eval.sampled": False, "env.video_episodes": 0})
    losses = [json.loads(line)["loss/sft"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    assert "success" in results["after"]["greedy"]
