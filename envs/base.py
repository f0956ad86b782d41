"""The chunk-level vectorised environment interface every simulator speaks to the trainer.

A VLA policy emits an *action chunk* and the environment executes it whole, so the interface is
one call per chunk (after RLinf's ``chunk_step``), not one per control step::

    obs = env.reset(seeds)                      # one seed per env: initial state + instruction
    obs, rewards, terminated, truncated, info = env.chunk_step(actions)   # actions [N, C, A]

``obs`` is a dict: ``state`` float32 [N, D] (proprioception and scene state), ``instruction``
list[str] of N, and, when the env renders, ``image`` uint8 [N, h, w, 3]. ``rewards`` is
[N, C] per executed step; ``terminated``/``truncated`` are [N] for the chunk; ``info["success"]``
is bool [N], true once the episode has succeeded. An env that finished is frozen for the rest
of the chunk (its later actions are ignored, rewards 0). With ``autoreset`` it is reset only
*after* the whole chunk (the last observation kept in ``info["final_obs"]``), so chunk
boundaries stay clean for chunk-level advantages; the trainer itself runs whole episodes from
given seeds and leaves ``autoreset`` off.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

# seeds from HELDOUT_SEED_OFFSET on are held-out initial states and phrasings
from mmpost.data.splits import HELDOUT_SEED_OFFSET  # noqa: F401 (re-exported)
from mmpost.data.splits import split_seeds as data_split_seeds



@runtime_checkable
class ChunkEnv(Protocol):
    num_envs: int
    state_dim: int
    action_dim: int
    chunk_len: int  # control steps executed per chunk
    max_chunks: int  # episode length limit, in chunks

    def reset(self, seeds: list[int]) -> dict: ...

    def chunk_step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]: ...

    def close(self) -> None: ...


@runtime_checkable
class ReplacesWorkers(Protocol):
    """A chunk env whose workers may be lost and replaced, their episodes replayed (Ray actors)."""

    restarts: int  # workers replaced so far


@runtime_checkable
class ScriptedExpert(Protocol):
    """A chunk env with a scripted expert on privileged state, the source of SFT demonstrations."""

    @staticmethod
    def has_expert(env_id: str) -> bool: ...  # whether task ``env_id`` of this simulator has one

    def expert(self) -> np.ndarray: ...  # [N, A] the expert's action for every env's current state


@runtime_checkable
class PrivateInterpreter(Protocol):
    """A chunk env whose simulator may live in a private environment (:mod:`mmpost.private_env`):
    its envs then run in worker processes of that interpreter."""

    @staticmethod
    def interpreter() -> str | None: ...  # that environment's Python, or None to run in this process


def load_triton_before_llvm_graphics() -> None:
    """Mesa's software renderers (llvmpipe EGL for MuJoCo, lavapipe Vulkan for SAPIEN) and Triton all
    carry LLVM: Triton's native module segfaults when it loads after such a context exists (torch
    imports it lazily, e.g. in the first optimizer), so load it, when installed, before the first one."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken triton: nothing to protect
        pass


def keep_live(old: dict, new: dict, live: np.ndarray) -> dict:
    """Observations of ``live`` envs from ``new``; finished envs keep their last view from ``old``."""
    out = {}
    for key, value in new.items():
        if isinstance(value, list):
            out[key] = [n if alive else o for n, o, alive in zip(value, old[key], live)]
        else:
            out[key] = np.where(live.reshape(-1, *[1] * (value.ndim - 1)), value, old[key])
    return out


def split_seeds(split: str, n: int) -> list[int]:
    """Episode seeds of a split: train from 0, held-out from :data:`HELDOUT_SEED_OFFSET`."""
    return list(data_split_seeds(split, n))


def make_env(cfg, num_envs: int | None = None):
    """The chunk env an :class:`~mmpost.config.EnvConfig` names: ``""`` or ``"reach"`` (the
    MuJoCo reach scene), ``"maniskill:ENV_ID"``, ``"libero:SUITE"``; in ``cfg.workers``
    subprocesses when more than one, or when the env class names another interpreter
    (``interpreter()``: LIBERO set up by ``mmpost setup libero`` runs in its own environment)."""
    from mmpost.registry import ENVS

    name, _, arg = (cfg.name or "reach").partition(":")
    env_cls = ENVS.get(name)
    kwargs = {"chunk_len": cfg.chunk_len, "max_chunks": cfg.max_chunks, "obs": cfg.obs, "image_size": cfg.image_size}
    if arg:
        kwargs["env_id"] = arg
    num_envs = num_envs or cfg.num_envs
    python = env_cls.interpreter() if issubclass(env_cls, PrivateInterpreter) else None
    if cfg.backend == "ray":
        if python:
            raise ValueError(f"env.backend=ray runs envs in Ray's workers, which cannot use {name}'s private "
                             "interpreter: install its extra into the Ray environment or use env.backend=local")
        from mmpost.ray_backends import RayChunkEnv

        return RayChunkEnv(env_cls, num_envs, min(cfg.workers, num_envs), **kwargs)
    if cfg.workers > 1 or python:
        from mmpost.envs.subproc import SubprocChunkEnv

        return SubprocChunkEnv(env_cls, num_envs, min(cfg.workers, num_envs), python=python, **kwargs)
    return env_cls(num_envs, **kwargs)


def expert_demonstrations(env_cfg, n: int, horizon: int, noise: float, seed: int, first_episode_seed: int) -> list[dict]:
    """(observation, next ``horizon`` expert actions) rows at every control step of ``n`` episodes of
    the env ``env_cfg`` names, acted by its scripted expert (:class:`ScriptedExpert`) with Gaussian noise of
    std ``noise`` on the executed actions (imperfect demonstrations); episodes from seeds
    ``first_episode_seed ...``. After an episode ends the expert holds still."""
    from dataclasses import replace

    from mmpost.registry import ENVS

    name, _, env_id = (env_cfg.name or "reach").partition(":")
    env_cls = ENVS.get(name)
    if not (issubclass(env_cls, ScriptedExpert) and env_cls.has_expert(env_id)):
        raise ValueError(f"env {env_cfg.name!r} has no scripted expert: set data.path to a JSONL of "
                         "{state, instruction, actions} rows, or skip SFT with --set sft.steps=0")
    steps = env_cfg.chunk_len * env_cfg.max_chunks
    # the expert acts in one local env (env.backend=ray is for the policy's rollouts)
    env = make_env(replace(env_cfg, chunk_len=1, max_chunks=steps, workers=1, backend="local"), num_envs=n)
    rng = np.random.default_rng(seed)
    obs = env.reset([first_episode_seed + i for i in range(n)])
    records, actions, alive = [], [], []
    for _ in range(steps):
        action = np.clip(env.expert() + rng.normal(0, noise, (n, env.action_dim)), -1, 1)
        records.append(obs)
        actions.append(action)
        alive.append(~env.done.copy())
        obs, *_ = env.chunk_step(action[:, None])
    env.close()
    actions, alive = np.stack(actions, 1), np.stack(alive, 1)  # [n, steps, A], [n, steps]
    actions = actions * alive[..., None]
    padded = np.concatenate([actions, np.zeros((n, horizon, env.action_dim))], 1)
    rows = []
    for t, record in enumerate(records):
        for i in np.flatnonzero(alive[:, t]):
            row = {"state": record["state"][i], "instruction": record["instruction"][i],
                   "actions": padded[i, t:t + horizon].astype(np.float32)}
            if "image" in record:
                row["image"] = record["image"][i]
            rows.append(row)
    return rows
