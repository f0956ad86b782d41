"""``reach``: a real MuJoCo scene where a planar two-link arm must touch the target the
instruction names ("touch the blue ball") among four coloured targets.

The arm has position servos on both joints. An action is an end-effector displacement in
[-1, 1]^2 (scaled by :data:`ACTION_SCALE` m) per control step of 0.05 s (10 physics steps),
turned into joint targets by damped least-squares inverse kinematics on MuJoCo's site Jacobian,
like the end-effector delta controllers of LIBERO and ManiSkill (``pd_ee_delta_pos``). The state
observation lists all four targets (relative to the fingertip) in a fixed colour order, so the
policy must read the instruction to know which one to reach. Success: the fingertip within :data:`SUCCESS_RADIUS` m
of the named target; the episode then terminates with reward 1 (sparse).

Physics is batched as several ``MjData`` in one process (one shared ``MjModel``); images come
from MuJoCo's off-screen renderer (``MUJOCO_GL=egl`` unless the user set it), about 0.5 ms a
64x64 frame on CPU with shadows and multisampling off.
"""

from __future__ import annotations

import os

import numpy as np

from mmpost.data.splits import OOD_SEED_OFFSET
from mmpost.envs.base import HELDOUT_SEED_OFFSET, load_triton_before_llvm_graphics

os.environ.setdefault("MUJOCO_GL", "egl")

COLORS = {"red": "1 0.1 0.1 1", "green": "0.1 0.8 0.1 1", "blue": "0.1 0.2 1 1", "yellow": "0.95 0.85 0 1"}
TRAIN_TEMPLATES = ["reach the {} target", "touch the {} ball", "move to the {} one"]
HELDOUT_TEMPLATES = ["go to the {} sphere"]  # phrasing never seen in training
LINK = 0.12  # both links, m
ACTION_SCALE = 0.03  # m of end-effector displacement per unit action and control step
IK_DAMPING = 0.01
FRAME_SKIP = 10
SUCCESS_RADIUS = 0.02
STATE_DIM = 6 + 2 + 2 * len(COLORS)


def scene_xml(image_size: int = 64) -> str:
    targets = "".join(
        f'<body name="target_{name}" mocap="true"><geom type="sphere" size=".016" rgba="{rgba}"/></body>'
        for name, rgba in COLORS.items())
    return f"""
<mujoco model="reach">
  <compiler angle="radian"/>
  <option timestep="0.005" integrator="implicitfast"/>
  <visual><quality shadowsize="0" offsamples="0"/><global offwidth="{image_size}" offheight="{image_size}"/></visual>
  <default><geom contype="0" conaffinity="0"/><joint damping="0.02" armature="0.002"/></default>
  <worldbody>
    <light pos="0 0 1" dir="0 0 -1" castshadow="false" diffuse=".8 .8 .8"/>
    <geom type="plane" size=".3 .3 .01" rgba=".92 .92 .92 1"/>
    <camera name="top" pos="0 0 0.62" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <body name="link1" pos="0 0 .02">
      <joint name="shoulder" type="hinge" axis="0 0 1"/>
      <geom type="capsule" fromto="0 0 0 {LINK} 0 0" size=".012" rgba=".25 .25 .25 1" mass=".1"/>
      <body name="link2" pos="{LINK} 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" limited="true" range="-2.8 2.8"/>
        <geom type="capsule" fromto="0 0 0 {LINK} 0 0" size=".01" rgba=".5 .5 .5 1" mass=".08"/>
        <site name="tip" pos="{LINK} 0 0" size=".012" rgba="0 0 0 1"/>
      </body>
    </body>
    {targets}
  </worldbody>
  <actuator>
    <position joint="shoulder" kp="5" dampratio="1"/>
    <position joint="elbow" kp="5" dampratio="1" ctrlrange="-2.8 2.8" ctrllimited="true"/>
  </actuator>
</mujoco>"""


def episode_spec(seed: int) -> dict:
    """Initial joint angles, target positions, the named target and the instruction of ``seed``."""
    rng = np.random.default_rng(seed)
    targets = []
    while len(targets) < len(COLORS):
        radius, angle = rng.uniform(0.08, 0.22), rng.uniform(-np.pi, np.pi)
        point = radius * np.array([np.cos(angle), np.sin(angle)])
        if all(np.linalg.norm(point - t) > 0.07 for t in targets):
            targets.append(point)
    goal = int(rng.integers(len(COLORS)))
    templates = TRAIN_TEMPLATES
    # a phrasing never trained: half the held-out episodes, every out-of-distribution one
    if seed >= HELDOUT_SEED_OFFSET and (rng.random() < 0.5 or seed >= OOD_SEED_OFFSET):
        templates = HELDOUT_TEMPLATES
    template = templates[int(rng.integers(len(templates)))]
    return {"qpos": np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-2.0, 2.0)]),
            "targets": np.array(targets), "goal": goal,
            "instruction": template.format(list(COLORS)[goal])}


def wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def expert_action(tip_xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
    """Scripted expert: move the fingertip straight at the goal, at most full speed."""
    return np.clip((goal_xy - tip_xy) / ACTION_SCALE, -1.0, 1.0)


class ReachVecEnv:
    """``num_envs`` reach episodes batched in one process (see :mod:`mmpost.envs.base`).

    Args:
        num_envs: parallel environments.
        chunk_len: control steps executed per :meth:`chunk_step`.
        max_chunks: episode length limit in chunks (truncation).
        obs: ``"state"`` (proprioception, target positions, instruction) or ``"image"`` (adds a
            top-down camera image; the state then omits the target positions, so the policy
            must find the targets in the picture).
        image_size: camera resolution (square).
        autoreset: reset finished envs after the chunk with a fresh seed (see the base module).
    """

    action_dim = 2

    def __init__(self, num_envs: int, chunk_len: int = 4, max_chunks: int = 8, obs: str = "state",
                 image_size: int = 64, autoreset: bool = False):
        import mujoco

        if obs not in ("state", "image"):
            raise ValueError(f"env.obs must be 'state' or 'image', got {obs!r}")
        self._mujoco = mujoco
        self.num_envs, self.chunk_len, self.max_chunks = num_envs, chunk_len, max_chunks
        self.obs_mode, self.image_size, self.autoreset = obs, image_size, autoreset
        self.state_dim = STATE_DIM if obs == "state" else 8
        self.model = mujoco.MjModel.from_xml_string(scene_xml(image_size))
        self.data = [mujoco.MjData(self.model) for _ in range(num_envs)]
        self.tip = self.model.site("tip").id
        self._jacobian = np.zeros((3, self.model.nv))
        self._renderer = None
        self.seeds = [0] * num_envs
        self.specs: list[dict] = []
        self.steps = np.zeros(num_envs, dtype=int)
        self.done = np.zeros(num_envs, dtype=bool)
        self.success = np.zeros(num_envs, dtype=bool)
        self._resets = 0
        self._recording: dict[int, list] = {}

    # ------------------------------------------------------------------ episode control

    def reset(self, seeds: list[int]) -> dict:
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} seeds, got {len(seeds)}")
        self.specs = [None] * self.num_envs
        for i, seed in enumerate(seeds):
            self._reset_one(i, int(seed))
        return self.observe()

    def _reset_one(self, i: int, seed: int) -> None:
        mujoco, data = self._mujoco, self.data[i]
        spec = episode_spec(seed)
        mujoco.mj_resetData(self.model, data)
        data.qpos[:] = spec["qpos"]
        data.ctrl[:] = spec["qpos"]
        data.mocap_pos[:, :2] = spec["targets"]
        data.mocap_pos[:, 2] = 0.02
        mujoco.mj_forward(self.model, data)
        self.seeds[i], self.specs[i] = seed, spec
        if i in self._recording:
            self._recording[i] = [self.render([i])[0]]
        self.steps[i], self.done[i], self.success[i] = 0, False, False

    def chunk_step(self, actions: np.ndarray):
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, self.chunk_len, self.action_dim):
            raise ValueError(f"actions must be [{self.num_envs}, {self.chunk_len}, {self.action_dim}], "
                             f"got {list(actions.shape)}")
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        mujoco = self._mujoco
        rewards = np.zeros((self.num_envs, self.chunk_len), dtype=np.float32)
        was_done = self.done.copy()
        terminated = np.zeros(self.num_envs, dtype=bool)
        for i, data in enumerate(self.data):
            for h in range(self.chunk_len):
                if self.done[i]:
                    break
                target = data.qpos + self._joint_step(data, ACTION_SCALE * np.clip(actions[i, h], -1.0, 1.0))
                data.ctrl[:] = [target[0], np.clip(target[1], -2.8, 2.8)]
                mujoco.mj_step(self.model, data, nstep=FRAME_SKIP)
                if i in self._recording:
                    self._recording[i].append(self.render([i])[0])
                self.steps[i] += 1
                if self._distance(i) < SUCCESS_RADIUS:
                    rewards[i, h], terminated[i], self.success[i], self.done[i] = 1.0, True, True, True
            if self.steps[i] >= self.max_chunks * self.chunk_len:
                self.done[i] = True
        truncated = self.done & ~terminated & ~was_done
        info = {"success": self.success.copy()}
        obs = self.observe()
        if self.autoreset and self.done.any():
            info["final_obs"] = obs
            for i in np.flatnonzero(self.done):
                self._resets += 1
                self._reset_one(i, self.seeds[i] + 1_000_003 * self._resets)
            obs = self.observe()
        return obs, rewards, terminated, truncated, info

    def _joint_step(self, data, displacement: np.ndarray) -> np.ndarray:
        """Joint change moving the fingertip by ``displacement``: damped least squares,
        ``J^T (J J^T + lambda^2 I)^-1 d``, with the 2x2 inverse written out (this runs per env
        and control step)."""
        self._mujoco.mj_jacSite(self.model, data, self._jacobian, None, self.tip)
        j = self._jacobian[:2]
        a, b, d = j[0] @ j[0] + IK_DAMPING**2, j[0] @ j[1], j[1] @ j[1] + IK_DAMPING**2
        x, y = displacement
        det = a * d - b * b
        return j.T @ np.array([(d * x - b * y) / det, (a * y - b * x) / det])

    def record(self, index: list[int]) -> None:
        """Render envs ``index`` after every control step from the next reset on (for videos)."""
        self._recording = {i: [] for i in index}

    def frames(self) -> dict[int, list]:
        """The recorded frames per env since :meth:`record`, and stop recording."""
        frames, self._recording = self._recording, {}
        return frames

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ observations

    def _distance(self, i: int) -> float:
        goal = self.specs[i]["targets"][self.specs[i]["goal"]]
        return float(np.linalg.norm(self.data[i].site_xpos[self.tip][:2] - goal))

    def observe(self) -> dict:
        rows = []
        for i, data in enumerate(self.data):
            q, qd = data.qpos, data.qvel
            tip = data.site_xpos[self.tip][:2]
            row = [np.cos(q), np.sin(q), 0.1 * qd, 5.0 * tip]
            if self.obs_mode == "state":  # targets relative to the fingertip, as ManiSkill's tcp_to_goal_pos
                row.append(5.0 * (self.specs[i]["targets"] - tip).ravel())
            rows.append(np.concatenate(row))
        obs = {"state": np.asarray(rows, dtype=np.float32),
               "instruction": [spec["instruction"] for spec in self.specs]}
        if self.obs_mode == "image":
            obs["image"] = self.render()
        return obs

    def render(self, index=None) -> np.ndarray:
        """uint8 [n, h, w, 3] top-camera frames of envs ``index`` (default all)."""
        if self._renderer is None:
            load_triton_before_llvm_graphics()
            self._renderer = self._mujoco.Renderer(self.model, self.image_size, self.image_size)
        frames = []
        for i in range(self.num_envs) if index is None else index:
            self._renderer.update_scene(self.data[i], camera="top")
            frames.append(self._renderer.render().copy())
        return np.stack(frames)

    @staticmethod
    def has_expert(env_id: str) -> bool:
        return True

    def expert(self) -> np.ndarray:
        """[N, A] the scripted expert's action for every env's current state."""
        return np.stack([expert_action(d.site_xpos[self.tip][:2], s["targets"][s["goal"]])
                         for d, s in zip(self.data, self.specs)])
