"""Any gymnasium ``VectorEnv`` as a chunk env, and the reach scene as a gymnasium ``Env``.

The vector env must not auto-reset (``autoreset_mode=AutoresetMode.DISABLED``): gymnasium's
default (``NEXT_STEP``) would insert a reset step in the middle of a chunk. An env that finishes
is restarted with a reset mask (gymnasium refuses to step it otherwise) and its results are
ignored until the trainer resets all envs, as the chunk interface requires
(:mod:`mmpost.envs.base`).
"""

from __future__ import annotations

import numpy as np

from mmpost.envs.base import keep_live


class GymChunkEnv:
    """Chunk interface over a gymnasium ``VectorEnv`` (observations: a Box, or a Dict with
    ``state`` and optionally ``image``; success from ``info["success"]`` or ``info["is_success"]``)."""

    def __init__(self, vector_env, chunk_len: int, max_chunks: int, instruction: str = ""):
        from gymnasium.vector import AutoresetMode

        mode = vector_env.metadata.get("autoreset_mode")
        if mode is not None and mode != AutoresetMode.DISABLED:
            raise ValueError("GymChunkEnv needs a VectorEnv built with autoreset_mode=AutoresetMode.DISABLED "
                             f"(got {mode}); auto-reset inside a chunk would corrupt chunk-level returns")
        self.env, self.num_envs = vector_env, vector_env.num_envs
        self.chunk_len, self.max_chunks, self.instruction = chunk_len, max_chunks, instruction
        space = vector_env.single_observation_space
        state_space = space["state"] if hasattr(space, "spaces") else space
        self.state_dim = int(np.prod(state_space.shape))
        self.action_dim = int(np.prod(vector_env.single_action_space.shape))
        self.done = np.zeros(self.num_envs, dtype=bool)
        self.success = np.zeros(self.num_envs, dtype=bool)
        self.instructions = [instruction] * self.num_envs

    def _obs(self, raw) -> dict:
        obs = {"state": np.asarray(raw["state"] if isinstance(raw, dict) else raw, dtype=np.float32)
               .reshape(self.num_envs, -1), "instruction": list(self.instructions)}
        if isinstance(raw, dict) and "image" in raw:
            obs["image"] = np.asarray(raw["image"])
        return obs

    @staticmethod
    def _success(info: dict, n: int) -> np.ndarray:
        for key in ("success", "is_success"):
            if key in info:
                return np.asarray(info[key], dtype=bool).reshape(n)
        return np.zeros(n, dtype=bool)

    def reset(self, seeds: list[int]) -> dict:
        raw, info = self.env.reset(seed=[int(s) for s in seeds])
        if "instruction" in info:
            self.instructions = [str(x) for x in info["instruction"]]
        self.done[:], self.success[:] = False, False
        self.last = self._obs(raw)
        return self.last

    def chunk_step(self, actions: np.ndarray):
        actions = np.asarray(actions, dtype=np.float32)
        rewards = np.zeros((self.num_envs, self.chunk_len), dtype=np.float32)
        terminated = np.zeros(self.num_envs, dtype=bool)
        was_done = self.done.copy()
        for h in range(self.chunk_len):
            raw, reward, term, trunc, info = self.env.step(actions[:, h])
            live = ~self.done  # envs that were still running at this step
            rewards[live, h] = np.asarray(reward, dtype=np.float32)[live]
            self.success |= live & self._success(info, self.num_envs)
            terminated |= live & np.asarray(term, dtype=bool)
            self.done |= live & (np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool))
            self.last = keep_live(self.last, self._obs(raw), live)  # finished envs keep their last view
            finished = live & self.done
            if finished.any():  # gymnasium refuses to step a finished env: restart it, ignore it
                self.env.reset(options={"reset_mask": finished})
        truncated = self.done & ~terminated & ~was_done
        return self.last, rewards, terminated, truncated, {"success": self.success.copy()}

    def render(self, index=None):
        frames = np.asarray(self.env.render())
        return frames if index is None else frames[list(index)]

    def close(self) -> None:
        self.env.close()


def reach_gym_env(max_chunks: int = 8, chunk_len: int = 4, obs: str = "state"):
    """The reach scene as a single gymnasium ``Env`` (one control step per ``step``)."""
    import gymnasium as gym

    from mmpost.envs.reach import ReachVecEnv

    class ReachGymEnv(gym.Env):
        metadata = {"render_modes": ["rgb_array"]}
        render_mode = "rgb_array"

        def __init__(self):
            self.sim = ReachVecEnv(1, chunk_len=1, max_chunks=max_chunks * chunk_len, obs=obs)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.sim.state_dim,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (self.sim.action_dim,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            o = self.sim.reset([0 if seed is None else seed])
            return o["state"][0], {"instruction": o["instruction"][0], "success": False}

        def step(self, action):
            o, r, term, trunc, info = self.sim.chunk_step(np.asarray(action)[None, None])
            return o["state"][0], float(r[0, 0]), bool(term[0]), bool(trunc[0]), {"success": bool(info["success"][0])}

        def render(self):
            return self.sim.render()[0]

        def close(self):
            self.sim.close()

    return ReachGymEnv()
