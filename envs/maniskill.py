"""ManiSkill3 tasks (GPU-simulated, batched torch tensors) behind the chunk interface.

Optional extra: ``pip install 'mmpost[maniskill]'``; needs an NVIDIA GPU with Vulkan (SAPIEN
cannot create a scene without a render device). ``mmpost train --task reach --env
maniskill:PickCube-v1`` trains the same flow policy there (no scripted demonstrations: give
``data.path`` or skip SFT with ``--set sft.steps=0``).
"""

from __future__ import annotations

import numpy as np

INSTRUCTIONS = {
    "PickCube-v1": "pick up the cube and move it to the goal",
    "PushCube-v1": "push the cube to the goal region",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "PullCube-v1": "pull the cube to the goal region",
    "PokeCube-v1": "use the peg to poke the cube to the goal",
}


def _require():
    try:
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the environments)
        from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv
    except ImportError as error:
        raise ImportError("the ManiSkill env needs the optional extra: pip install 'mmpost[maniskill]' "
                          f"(and a GPU with Vulkan); import failed: {error}") from None
    return gym, ManiSkillVectorEnv


def _flatten(tree) -> "torch.Tensor":  # noqa: F821
    import torch

    if isinstance(tree, dict):
        return torch.cat([_flatten(v) for k, v in sorted(tree.items()) if k != "sensor_data" and k != "sensor_param"], -1)
    return tree.float().flatten(1)


class ManiSkillChunkEnv:
    """``num_envs`` copies of ManiSkill task ``env_id`` in one GPU simulation.

    Observations: ``state`` = the flattened agent and task state (``obs_mode="state"``), or with
    ``obs="image"`` the base camera's RGB plus the flattened agent/extra state. Actions are
    ``pd_ee_delta_pos`` end-effector deltas (like the reach scene). Episodes are never reset
    inside a chunk (``auto_reset=False``); finished envs are masked until the next reset.
    """

    def __init__(self, num_envs: int, env_id: str = "PickCube-v1", chunk_len: int = 4, max_chunks: int = 16,
                 obs: str = "state", image_size: int = 64, control_mode: str = "pd_ee_delta_pos"):
        gym, ManiSkillVectorEnv = _require()
        self.num_envs, self.chunk_len, self.max_chunks, self.obs_mode = num_envs, chunk_len, max_chunks, obs
        env = gym.make(env_id, num_envs=num_envs, obs_mode="state_dict" if obs == "state" else "rgb",
                       control_mode=control_mode, sensor_configs={"width": image_size, "height": image_size},
                       max_episode_steps=chunk_len * max_chunks)
        self.env = ManiSkillVectorEnv(env, num_envs, auto_reset=False, ignore_terminations=False)
        self.instruction = INSTRUCTIONS.get(env_id, env_id)
        self.action_dim = int(np.prod(self.env.single_action_space.shape))
        probe = self._obs(self.env.reset(seed=list(range(num_envs)))[0])
        self.state_dim = probe["state"].shape[1]
        self.done = None

    def _obs(self, raw) -> dict:
        obs = {"state": _flatten(raw), "instruction": [self.instruction] * self.num_envs}
        if self.obs_mode == "image":
            camera = next(iter(raw["sensor_data"].values()))
            obs["image"] = camera["rgb"]
        return obs

    def reset(self, seeds: list[int]) -> dict:
        import torch

        raw, _ = self.env.reset(seed=[int(s) for s in seeds])
        self.done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.env.device)
        self.success = torch.zeros_like(self.done)
        return self._obs(raw)

    def chunk_step(self, actions):
        import torch

        actions = torch.as_tensor(actions, device=self.env.device, dtype=torch.float32)
        rewards = torch.zeros(self.num_envs, self.chunk_len, device=self.env.device)
        terminated = torch.zeros_like(self.done)
        was_done = self.done.clone()
        for h in range(self.chunk_len):
            raw, reward, term, trunc, info = self.env.step(actions[:, h])
            live = ~self.done
            rewards[live, h] = reward.float()[live]
            self.success |= live & info["success"].bool()
            terminated |= live & term.bool()
            self.done |= live & (term.bool() | trunc.bool())
            obs = self._obs(raw)
        truncated = self.done & ~terminated & ~was_done
        as_numpy = lambda t: t.cpu().numpy()  # noqa: E731 - small per-env bookkeeping only
        return obs, as_numpy(rewards), as_numpy(terminated), as_numpy(truncated), {"success": as_numpy(self.success)}

    def render(self, index=None):
        frames = self.env.render()
        frames = frames.cpu().numpy() if hasattr(frames, "cpu") else np.asarray(frames)
        return frames if index is None else frames[list(index)]

    def close(self) -> None:
        self.env.close()
