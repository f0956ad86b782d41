"""LIBERO suites (robosuite + MuJoCo, off-screen EGL rendering) behind the chunk interface.

``mmpost setup libero --data COPY`` installs LIBERO into a private environment beside the trainer's
(robosuite 1.4 needs mujoco < 3.4; :mod:`mmpost.envs.libero_install`) and unpacks its data folders;
the envs then run in worker processes of that environment. Alternatively install it into your own
environment (``pip install 'mmpost[libero]'`` then ``pip install --no-deps robomimic==0.2.0``: its
torchvision pin would replace the matched torch pair) and point ``LIBERO_ROOT`` at the
``libero/libero`` folder of your copy of the LIBERO repository (``bddl_files/``, ``init_files/``,
``assets/``): LIBERO's data are never downloaded by mmpost. mmpost pre-writes LIBERO's
``config.yaml`` so that importing it never prompts.

robosuite is single-env, so each worker process holds a list of envs; use ``env.workers`` to
spread them over processes. Rendering is the cost: about 5 env steps/s per core on CPU, so this
is for GPU nodes with EGL.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmpost.envs.base import load_triton_before_llvm_graphics

SETTLE_STEPS = 10  # LIBERO convention: no-op steps after set_init_state so objects come to rest


SETUP_HINT = "mmpost setup libero --data LIBERO_DATA (a tarball or folder of LIBERO's data)"


def _prepare_config() -> None:
    from mmpost.envs.libero_install import data_root

    root = data_root()
    if root is None:
        raise FileNotFoundError("LIBERO needs its data folders (bddl_files/, init_files/, assets/) from a local copy, "
                                f"never downloaded: run `{SETUP_HINT}`, or set LIBERO_ROOT to the libero/libero "
                                "folder of your LIBERO repository")
    from mmpost.models.tiny_qwen2vl import mmpost_home

    config_dir = Path(os.environ.setdefault("LIBERO_CONFIG_PATH", str(mmpost_home() / "libero")))
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MUJOCO_GL", "egl")  # off-screen rendering without a display
    _link_assets(root / "assets")
    (config_dir / "config.yaml").write_text(
        f"benchmark_root: {root}\nbddl_files: {root / 'bddl_files'}\ninit_states: {root / 'init_files'}\n"
        f"datasets: {root.parent / 'datasets'}\nassets: {root / 'assets'}\n")


def _link_assets(assets: Path) -> None:
    """LIBERO ignores its config's ``assets`` key and reads ``libero/libero/assets`` inside its installed
    package: link the user's folder there (once; the link is the only change to the package)."""
    import importlib.util

    package = Path(next(iter(importlib.util.find_spec("libero").submodule_search_locations))) / "libero"
    target = package / "assets"
    if target.exists() or target.is_symlink():
        if target.resolve() != assets.resolve() and not (target / "scenes").is_dir():
            raise FileNotFoundError(f"LIBERO's package folder has {target}, which is not a LIBERO assets folder; "
                                    f"remove it so mmpost can link {assets} there")
        return
    try:
        target.symlink_to(assets, target_is_directory=True)
    except OSError as error:
        raise PermissionError(f"LIBERO reads its assets from {target} (its installed package), not from LIBERO_ROOT: "
                              f"link them yourself with `ln -s {assets} {target}` ({error})") from None


def _require():
    import importlib.util

    if importlib.util.find_spec("libero") is None:
        raise ImportError(f"the LIBERO env needs LIBERO: run `{SETUP_HINT}` (a private environment), or install "
                          "the optional extra here: pip install 'mmpost[libero]' (then pip install --no-deps robomimic==0.2.0)")
    _prepare_config()  # before the import, which otherwise asks for paths on stdin
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
        from libero.libero.envs.env_wrapper import ControlEnv
    except ImportError as error:
        raise ImportError("the LIBERO env needs the optional extra: pip install 'mmpost[libero]' "
                          f"(then pip install --no-deps robomimic==0.2.0); import failed: {error}") from None
    return benchmark, get_libero_path, ControlEnv, OffScreenRenderEnv


def _axis_angle(quat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) to axis-angle, as openpi's LIBERO example."""
    w = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    return np.zeros(3) if den < 1e-8 else quat[:3] * 2.0 * np.arccos(w) / den


class LiberoChunkEnv:
    """``num_envs`` instances of one LIBERO task; ``env_id`` is ``SUITE`` or ``SUITE/TASK_ID``
    (e.g. ``libero_spatial/3``). A seed picks one of the task's benchmark initial states."""

    action_dim = 7  # OSC_POSE: end-effector position and rotation deltas, gripper

    @staticmethod
    def interpreter() -> str | None:
        """The private environment's Python when LIBERO is not installed in this one but
        ``mmpost setup libero`` made it; None to run in this process."""
        from mmpost.envs import libero_install

        return libero_install.ENV.python_for("libero")

    def __init__(self, num_envs: int, env_id: str = "libero_spatial", chunk_len: int = 5, max_chunks: int = 44,
                 obs: str = "image", image_size: int = 128):
        benchmark, get_libero_path, ControlEnv, OffScreenRenderEnv = _require()
        load_triton_before_llvm_graphics()
        suite_name, _, task_id = env_id.partition("/")
        suite = benchmark.get_benchmark_dict()[suite_name]()
        task = suite.get_task(int(task_id or 0))
        self.init_states = suite.get_task_init_states(int(task_id or 0))
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        # hard_reset=False: every reset would otherwise rebuild the MuJoCo model from XML (seconds), and
        # set_init_state overwrites the whole simulator state anyway. State observations skip the cameras.
        camera = dict(camera_names=["agentview"], camera_heights=image_size, camera_widths=image_size)
        self.envs = [OffScreenRenderEnv(bddl_file_name=bddl, hard_reset=False, **camera) if obs == "image" else
                     ControlEnv(bddl_file_name=bddl, hard_reset=False, use_camera_obs=False,
                                has_offscreen_renderer=False) for _ in range(num_envs)]
        self.num_envs, self.chunk_len, self.max_chunks, self.obs_mode = num_envs, chunk_len, max_chunks, obs
        self.instruction = task.language
        self.last, self.done, self.success = [None] * num_envs, np.zeros(num_envs, bool), np.zeros(num_envs, bool)
        self.steps = np.zeros(num_envs, int)
        self.state_dim = self.reset([0] * num_envs)["state"].shape[1]

    def _obs(self) -> dict:
        """``state``: end-effector position, axis-angle and the two gripper joints (as openpi's LIBERO
        example), and with ``obs="state"`` (no camera) LIBERO's ``object-state`` (object poses) too."""
        state = np.stack([np.concatenate([o["robot0_eef_pos"], _axis_angle(o["robot0_eef_quat"]), o["robot0_gripper_qpos"],
                                          o["object-state"] if self.obs_mode == "state" else []])
                          for o in self.last]).astype(np.float32)
        obs = {"state": state, "instruction": [self.instruction] * self.num_envs}
        if self.obs_mode == "image":  # LIBERO's camera is upside down
            obs["image"] = np.stack([o["agentview_image"][::-1, ::-1] for o in self.last])
        return obs

    def reset(self, seeds: list[int]) -> dict:
        for i, (env, seed) in enumerate(zip(self.envs, seeds)):
            env.reset()
            self.last[i] = env.set_init_state(self.init_states[int(seed) % len(self.init_states)])
            for _ in range(SETTLE_STEPS):
                self.last[i], *_ = env.step([0.0] * 6 + [-1.0])
        self.done[:], self.success[:], self.steps[:] = False, False, 0
        return self._obs()

    def chunk_step(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        rewards = np.zeros((self.num_envs, self.chunk_len), np.float32)
        terminated, was_done = np.zeros(self.num_envs, bool), self.done.copy()
        for i, env in enumerate(self.envs):
            for h in range(self.chunk_len):
                if self.done[i]:
                    break
                self.last[i], reward, finished, _ = env.step(actions[i, h])
                self.steps[i] += 1
                rewards[i, h] = reward
                if finished:  # LIBERO's done means the task's goal predicates hold
                    self.success[i] = terminated[i] = self.done[i] = True
            if self.steps[i] >= self.chunk_len * self.max_chunks:
                self.done[i] = True
        truncated = self.done & ~terminated & ~was_done
        return self._obs(), rewards, terminated, truncated, {"success": self.success.copy()}

    def render(self, index=None):
        index = range(self.num_envs) if index is None else index
        return np.stack([self.last[i]["agentview_image"][::-1, ::-1] for i in index])

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ---------------------------------------------------------------------- demonstrations (LIBERO's HDF5)

def read_demonstrations(path, horizon: int) -> list[dict]:
    """(observation, next ``horizon`` actions) rows from a LIBERO demonstration file (robomimic layout:
    ``data/demo_N/actions`` [T, 7], ``data/demo_N/obs/{ee_pos, ee_ori, gripper_states, agentview_rgb}``,
    the instruction in ``data.attrs["problem_info"]``), as LIBERO's datasets ship them.

    The state is the 8-d robot state of ``env.obs=image`` (end effector, axis-angle, gripper) and the
    image the agent view turned upright, as :class:`LiberoChunkEnv` observes them. Past an episode's
    end the arm holds still and the gripper keeps its last command."""
    import json

    import h5py

    rows = []
    with h5py.File(path, "r") as file:
        if "data" not in file or "problem_info" not in file["data"].attrs:
            raise ValueError(f"{path}: not a LIBERO demonstration file (no data group with problem_info)")
        instruction = "".join(json.loads(file["data"].attrs["problem_info"])["language_instruction"]).strip('"')
        for name in sorted(file["data"], key=lambda n: int(n.split("_")[-1])):
            demo = file["data"][name]
            obs, actions = demo["obs"], np.asarray(demo["actions"], np.float32)
            state = np.concatenate([obs["ee_pos"], obs["ee_ori"], obs["gripper_states"]], axis=1).astype(np.float32)
            hold = np.zeros((horizon, actions.shape[1]), np.float32)
            hold[:, -1] = actions[-1, -1]
            padded = np.concatenate([actions, hold])
            images = obs["agentview_rgb"] if "agentview_rgb" in obs else None
            for t in range(len(actions)):
                row = {"state": state[t], "instruction": instruction, "actions": padded[t:t + horizon]}
                if images is not None:
                    row["image"] = np.ascontiguousarray(images[t][::-1, ::-1])
                rows.append(row)
    return rows


def record_demonstrations(env: "LiberoChunkEnv", act, seeds: list[int], path) -> None:
    """Run ``act(obs) -> actions [N, A]`` (a scripted or replayed policy) in ``env`` (``obs="image"``)
    from ``seeds``, one control step at a time, and write the episodes in LIBERO's layout (above)."""
    import json

    import h5py

    if env.obs_mode != "image" or env.chunk_len != 1:
        raise ValueError("record_demonstrations needs an env with obs='image' and chunk_len=1")
    episodes = [{"actions": [], "ee_pos": [], "ee_ori": [], "gripper_states": [], "agentview_rgb": []}
                for _ in seeds]
    obs = env.reset(seeds)
    for _ in range(env.max_chunks):
        live = ~env.done
        actions = np.asarray(act(obs), np.float32)
        for i in np.flatnonzero(live):
            episode = episodes[i]
            episode["ee_pos"].append(obs["state"][i, :3])
            episode["ee_ori"].append(obs["state"][i, 3:6])
            episode["gripper_states"].append(obs["state"][i, 6:8])
            episode["agentview_rgb"].append(obs["image"][i][::-1, ::-1])  # stored as LIBERO renders it
            episode["actions"].append(actions[i])
        obs, *_ = env.chunk_step(actions[:, None])
        if env.done.all():
            break
    with h5py.File(path, "w") as file:
        data = file.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": env.instruction})
        for n, episode in enumerate(episodes):
            demo = data.create_group(f"demo_{n}")
            demo.create_dataset("actions", data=np.stack(episode.pop("actions")))
            for key, values in episode.items():
                demo.create_dataset(f"obs/{key}", data=np.stack(values))
