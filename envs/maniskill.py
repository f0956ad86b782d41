"""ManiSkill 3 tasks behind the chunk interface: GPU physics batched, or CPU physics one scene per env.

Optional extra: ``pip install 'mmpost[maniskill]'``. SAPIEN needs a Vulkan device even without
rendering: a GPU's, or on a CPU-only machine Mesa's software lavapipe (``mmpost setup maniskill``
installs it privately, :mod:`mmpost.envs.vulkan`). ``sim_backend="auto"`` picks GPU physics
(``physx_cuda``, all envs in one batched scene) when CUDA is available, else CPU physics
(``physx_cpu``), where ManiSkill allows one env per ``gym.make``: this process then holds one
scene per env and steps them in turn; ``env.workers`` spreads them over processes.

``mmpost train --task maniskill`` trains the flow policy on PickCube; demonstrations come from
:func:`pick_cube_expert`, a scripted Cartesian expert following the waypoints of ManiSkill's own
motion-planning solution for PickCube (above the cube, down to it, close, carry to the goal). The
motion planner itself (``mplib`` 0.1.1, pinned by mani-skill 3.0.1) segfaults in ``Planner()``
with numpy 2, so it is not used.
"""

from __future__ import annotations

import numpy as np

from mmpost.envs.base import keep_live, load_triton_before_llvm_graphics

INSTRUCTIONS = {
    "PickCube-v1": "pick up the cube and move it to the goal",
    "PushCube-v1": "push the cube to the goal region",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "PullCube-v1": "pull the cube to the goal region",
    "PokeCube-v1": "use the peg to poke the cube to the goal",
}
POS_SCALE = 0.1  # m per unit action of pd_ee_delta_pos (ManiSkill's pos_lower/pos_upper)


def _require():
    from mmpost.envs.vulkan import use_lavapipe_if_needed

    use_lavapipe_if_needed()  # before SAPIEN creates its Vulkan instance
    load_triton_before_llvm_graphics()
    try:
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the environments)
    except ImportError as error:
        raise ImportError("the ManiSkill env needs the optional extra: pip install 'mmpost[maniskill]'; "
                          f"import failed: {error}") from None
    return gym


def _numpy(value) -> np.ndarray:
    """A ManiSkill value as numpy: torch tensors (CPU or GPU physics) or arrays."""
    return value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)


def _flatten(tree) -> np.ndarray:
    """ManiSkill's ``state_dict`` observation as float32 [N, D] (sorted keys, cameras left out)."""
    if isinstance(tree, dict):
        return np.concatenate([_flatten(v) for k, v in sorted(tree.items())
                               if k not in ("sensor_data", "sensor_param")], -1)
    array = _numpy(tree)
    return array.astype(np.float32).reshape(array.shape[0], -1)


class ManiSkillChunkEnv:
    """``num_envs`` copies of ManiSkill task ``env_id`` (e.g. ``PickCube-v1``).

    Observations: ``state`` = the flattened agent and task state, plus with ``obs="image"`` the base
    camera's RGB. Actions: ``pd_ee_delta_pos`` end-effector deltas and the gripper (like the reach
    scene). Rewards (PPO's step rewards): ``reward_mode="sparse"``, 1 at success as in pi_RL and the
    reach scene, or ManiSkill's ``"normalized_dense"`` shaping. Success: ManiSkill's own
    ``info["success"]``; an episode ends at success or after ``chunk_len * max_chunks`` control steps,
    and a finished env is frozen until the next reset.
    """

    def __init__(self, num_envs: int, env_id: str = "PickCube-v1", chunk_len: int = 4, max_chunks: int = 16,
                 obs: str = "state", image_size: int = 64, control_mode: str = "pd_ee_delta_pos",
                 sim_backend: str = "auto", reward_mode: str = "sparse"):
        import torch

        gym = _require()
        if sim_backend == "auto":
            sim_backend = "physx_cuda" if torch.cuda.is_available() else "physx_cpu"
        self.num_envs, self.chunk_len, self.max_chunks, self.obs_mode = num_envs, chunk_len, max_chunks, obs
        self.env_id, self.batched = env_id, sim_backend != "physx_cpu"
        kwargs = dict(obs_mode="state_dict" if obs == "state" else "rgb", control_mode=control_mode,
                      reward_mode=reward_mode, sim_backend=sim_backend, sensor_configs={"width": image_size, "height": image_size},
                      max_episode_steps=chunk_len * max_chunks)
        if obs == "state":  # no camera: no renderer (SAPIEN still wants a Vulkan device)
            kwargs["render_backend"] = "none"
        else:
            kwargs["render_mode"] = "rgb_array"
        try:
            if self.batched:
                self.envs = [gym.make(env_id, num_envs=num_envs, **kwargs)]
            else:  # ManiSkill's CPU physics: one env per gym.make
                self.envs = [gym.make(env_id, num_envs=1, **kwargs) for _ in range(num_envs)]
        except RuntimeError as error:
            if "rendering device" in str(error):
                from mmpost.envs.vulkan import missing_device_hint

                raise RuntimeError(f"{error}: {missing_device_hint()}") from None
            raise
        self.instruction = INSTRUCTIONS.get(env_id, env_id)
        self.action_dim = int(np.prod(self.envs[0].action_space.shape[-1:]))
        self.done = np.zeros(num_envs, bool)
        self.success = np.zeros(num_envs, bool)
        self.last = self.reset(list(range(num_envs)))
        self.state_dim = self.last["state"].shape[1]

    # ------------------------------------------------------------------ stepping

    def _observe(self, raws: list) -> dict:
        state = np.concatenate([_flatten(raw) for raw in raws])
        obs = {"state": state, "instruction": [self.instruction] * self.num_envs}
        if self.obs_mode == "image":
            cameras = [next(iter(raw["sensor_data"].values()))["rgb"] for raw in raws]
            obs["image"] = np.concatenate([_numpy(c) for c in cameras])
        return obs

    def reset(self, seeds: list[int]) -> dict:
        seeds = [int(s) for s in seeds]
        if self.batched:
            raws = [self.envs[0].reset(seed=seeds)[0]]
        else:
            raws = [env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds)]
            self._last_raw = raws
        for raw in raws:  # ManiSkill reads it from the last physics step's contacts: the previous episode's
            if isinstance(raw, dict) and "is_grasped" in raw.get("extra", {}):
                raw["extra"]["is_grasped"] = raw["extra"]["is_grasped"] * 0
        self.done[:], self.success[:] = False, False
        self._phase = np.zeros(self.num_envs, int)
        self.last = self._observe(raws)
        return self.last

    def _step_all(self, actions: np.ndarray):
        """One control step of every env: (raw observations, reward, terminated, truncated, success) as
        numpy [N] arrays. On CPU, finished envs are not stepped (their results are masked anyway)."""
        import torch

        if self.batched:
            raw, reward, term, trunc, info = self.envs[0].step(torch.as_tensor(actions, device=self.envs[0].unwrapped.device))
            as_numpy = lambda t: _numpy(t).reshape(self.num_envs)  # noqa: E731
            return [raw], as_numpy(reward).astype(np.float32), as_numpy(term).astype(bool), \
                as_numpy(trunc).astype(bool), as_numpy(info["success"]).astype(bool)
        raws, out = [], np.zeros((4, self.num_envs))
        for i, env in enumerate(self.envs):
            if self.done[i]:
                raws.append(self._last_raw[i])
                continue
            raw, reward, term, trunc, info = env.step(actions[i])
            raws.append(raw)
            out[:, i] = [float(reward), bool(term), bool(trunc), bool(info["success"])]
        self._last_raw = raws
        return raws, out[0].astype(np.float32), out[1].astype(bool), out[2].astype(bool), out[3].astype(bool)

    def chunk_step(self, actions):
        actions = _numpy(actions).astype(np.float32)
        rewards = np.zeros((self.num_envs, self.chunk_len), np.float32)
        terminated, was_done = np.zeros(self.num_envs, bool), self.done.copy()
        for h in range(self.chunk_len):
            if not self.batched and self.done.all():
                break
            raws, reward, term, trunc, success = self._step_all(actions[:, h])
            live = ~self.done
            rewards[live, h] = reward[live]
            self.success |= live & success
            terminated |= live & term
            self.done |= live & (term | trunc)
            self.last = keep_live(self.last, self._observe(raws), live)
        truncated = self.done & ~terminated & ~was_done
        return self.last, rewards, terminated, truncated, {"success": self.success.copy()}

    # ------------------------------------------------------------------ expert and rendering

    @staticmethod
    def has_expert(env_id: str) -> bool:
        return (env_id or "PickCube-v1") == "PickCube-v1"

    def expert(self) -> np.ndarray:
        """[N, A] the scripted expert's action for every env's current state (PickCube only)."""
        if not self.has_expert(self.env_id):
            raise ValueError(f"no scripted expert for {self.env_id}: give demonstrations with data.path")
        actions = []
        for i, env in enumerate(self.envs if not self.batched else [self.envs[0]] * self.num_envs):
            index = i if self.batched else 0
            action, self._phase[i] = pick_cube_expert(env.unwrapped, index, self._phase[i])
            actions.append(action)
        return np.stack(actions)

    def render(self, index=None):
        index = range(self.num_envs) if index is None else list(index)
        if self.batched:
            return _numpy(self.envs[0].render())[list(index)]
        frames = [self.envs[i].render() for i in index]
        return np.concatenate([_numpy(f) for f in frames])

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def pick_cube_expert(scene, index: int, phase: int) -> tuple[np.ndarray, int]:
    """PickCube's scripted expert on privileged state: (pd_ee_delta_pos action, next phase).

    Phases follow ManiSkill's motion-planning solution: 0 move 5 cm above the cube, 1 descend to it,
    2..6 close the gripper (5 steps), 7 carry the cube to the goal. 30 of 30 episodes succeed, in
    21 control steps on average."""
    tcp = scene.agent.tcp.pose.p[index].cpu().numpy()
    cube = scene.cube.pose.p[index].cpu().numpy()
    goal = scene.goal_site.pose.p[index].cpu().numpy()
    target, gripper = tcp, 1.0  # open
    if phase == 0:
        target = cube + np.array([0, 0, 0.05])
        phase = 1 if np.linalg.norm(target - tcp) < 0.01 else 0
    elif phase == 1:
        target = cube
        phase = 2 if np.linalg.norm(target - tcp) < 0.005 else 1
    elif phase < 7:
        gripper, phase = -1.0, phase + 1
    else:
        target, gripper = goal, -1.0
    move = np.clip((target - tcp) / POS_SCALE * 2.0, -1.0, 1.0)  # gain 2: half the way in one step
    return np.append(move, gripper).astype(np.float32), phase

