"""LeRobot datasets (``LeRobotDataset`` v2.x and v3.0 folders) as demonstrations for the flow policy.

A LeRobot folder holds ``meta/info.json`` (features, fps, path templates), the frames as Parquet under
``data/`` (one file per episode in v2.x, several episodes per file in v3.0), the task strings
(``meta/tasks.jsonl`` in v2.x, ``meta/tasks.parquet`` in v3.0) and camera streams as MP4 under
``videos/``. Every frame becomes one demonstration row, as the other robot data here:
``{"state", "instruction", "actions"}`` with the next ``horizon`` actions (past an episode's end the
last action repeats, as LeRobot's own ``delta_timestamps`` clamp to the episode) and, when a camera is
chosen (``data.columns=image=observation.images.NAME``), ``"image"`` (H, W, 3 uint8). Camera frames are
read from v2.x's per-episode videos or from image features stored in the Parquet files; v3.0 videos
(several episodes per MP4) are not read yet.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from mmpost.data.jsonl import DataError, parse_columns


def is_lerobot(path) -> bool:
    """Whether ``path`` is a LeRobot dataset folder."""
    return (Path(path) / "meta" / "info.json").is_file()


def read_lerobot(root, horizon: int, columns: list[str] | dict | None = None) -> list[dict]:
    """Demonstration rows of every frame of every episode of the LeRobot folder ``root``.

    ``columns`` may rename the features read: ``state`` (default ``observation.state``), ``actions``
    (default ``action``) and ``image`` (a camera key; default none: state observations only).
    """
    import pandas as pd

    root = Path(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    features = info.get("features", {})
    names = {"state": "observation.state", "actions": "action", **parse_columns(columns)}
    for field in ("state", "actions"):
        if names[field] not in features:
            raise DataError(f"{root}: no feature {names[field]!r} for {field} (features: {', '.join(features)}); "
                            f"map one with --set data.columns={field}=FEATURE")
    camera = names.get("image", "")
    if camera and features.get(camera, {}).get("dtype") not in ("video", "image"):
        cameras = [k for k, v in features.items() if v.get("dtype") in ("video", "image")]
        raise DataError(f"{root}: {camera!r} is not a camera feature (cameras: {', '.join(cameras) or 'none'})")
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise DataError(f"{root}: no Parquet files under data/")
    wanted = [names["state"], names["actions"], "episode_index", "frame_index", "task_index"]
    if camera and features[camera]["dtype"] == "image":
        wanted.append(camera)
    frames = pd.concat([pd.read_parquet(f, columns=wanted) for f in files], ignore_index=True)
    frames = frames.sort_values(["episode_index", "frame_index"], kind="stable")
    tasks = _task_strings(root)
    rows = []
    for episode, steps in frames.groupby("episode_index", sort=True):
        where = f"{root}: episode {episode}"
        try:
            states = np.stack(steps[names["state"]].to_numpy()).astype(np.float32)
            actions = np.stack(steps[names["actions"]].to_numpy()).astype(np.float32)
        except ValueError as error:
            raise DataError(f"{where}: state and action must be fixed-length numeric vectors ({error})") from None
        if not (np.isfinite(states).all() and np.isfinite(actions).all()):
            raise DataError(f"{where}: state or action holds NaN or inf")
        padded = np.concatenate([actions, np.repeat(actions[-1:], horizon, axis=0)])
        images = _camera_frames(root, info, camera, int(episode), steps, where) if camera else None
        instruction = tasks.get(int(steps["task_index"].iloc[0]), "")
        for t in range(len(actions)):
            row = {"state": states[t], "instruction": instruction, "actions": padded[t:t + horizon]}
            if images is not None:
                row["image"] = images[t]
            rows.append(row)
    return rows


def _task_strings(root: Path) -> dict[int, str]:
    """``{task_index: task}`` from v2.x's ``tasks.jsonl`` or v3.0's ``tasks.parquet`` (task strings as
    its index)."""
    jsonl, parquet = root / "meta" / "tasks.jsonl", root / "meta" / "tasks.parquet"
    if jsonl.is_file():
        return {int(r["task_index"]): r["task"] for r in map(json.loads, jsonl.read_text().splitlines()) if r}
    if parquet.is_file():
        import pandas as pd

        table = pd.read_parquet(parquet)
        if "task" in table.columns:
            return dict(zip(table["task_index"].astype(int), table["task"]))
        return {int(index): str(task) for task, index in zip(table.index, table["task_index"])}
    return {}


def _camera_frames(root: Path, info: dict, camera: str, episode: int, steps, where: str) -> list[np.ndarray]:
    """The episode's camera frames as (H, W, 3) uint8 arrays, one per step."""
    from PIL import Image

    if info["features"][camera]["dtype"] == "image":  # PNG/JPEG bytes in the Parquet column
        return [np.asarray(Image.open(io.BytesIO(v["bytes"] if isinstance(v, dict) else v)).convert("RGB"))
                for v in steps[camera]]
    if str(info.get("codebase_version", "")).startswith("v3"):
        raise DataError(f"{root}: camera frames of LeRobot v3.0 videos (several episodes per file) are not read "
                        "yet; train on state observations (leave data.columns image= out) or use a v2.1 copy")
    import av

    chunk = episode // int(info.get("chunks_size", 1000))
    video = root / info["video_path"].format(episode_chunk=chunk, video_key=camera, episode_index=episode)
    try:
        with av.open(str(video)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
    except (OSError, av.error.FFmpegError) as error:
        raise DataError(f"{where}: video {video} failed to decode ({error})") from None
    if len(frames) < len(steps):
        raise DataError(f"{where}: {video} has {len(frames)} frames for {len(steps)} steps")
    return [frames[int(i)] for i in steps["frame_index"]]
