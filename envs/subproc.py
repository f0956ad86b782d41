"""Step a chunk env's envs in worker subprocesses, split evenly, behind the same interface.

Each worker holds one batched env of its share of the envs (physics stays batched inside the
worker); the trainer batches policy inference over all of them. Useful when simulation, not
inference, dominates (rendering, heavier scenes) and there are cores to spare.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.spawn
import site
import sys

import numpy as np


def _worker(pipe, env_cls, num_envs: int, kwargs: dict, own_packages: bool) -> None:
    if own_packages:  # another interpreter (a private venv): its packages before the parent's sys.path
        sys.path[:0] = site.getsitepackages()
    try:
        env = env_cls(num_envs, **kwargs)
    except BaseException as error:  # noqa: BLE001 - raised again in the parent
        pipe.send(("error", error))
        pipe.close()
        return
    pipe.send(("ready", (env.state_dim, env.action_dim, env.chunk_len, env.max_chunks)))
    try:
        while True:
            command, payload = pipe.recv()
            if command == "reset":
                pipe.send(env.reset(payload))
            elif command == "step":
                pipe.send(env.chunk_step(payload))
            elif command == "render":
                pipe.send(env.render(payload))
            elif command == "close":
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        env.close()
        pipe.close()


def merge_obs(parts: list[dict]) -> dict:
    """The observations of several shares of envs as one batch, in share order."""
    return {key: (sum((p[key] for p in parts), []) if isinstance(parts[0][key], list)
                  else np.concatenate([p[key] for p in parts])) for key in parts[0]}


def share_sizes(num_envs: int, workers: int) -> list[int]:
    """How many of ``num_envs`` envs each of ``workers`` shares holds (as even as possible)."""
    return [len(part) for part in np.array_split(np.arange(num_envs), workers)]


def split(sizes: list[int], values) -> list:
    """``values`` (one per env) cut into the shares of ``sizes``."""
    bounds = np.cumsum([0] + list(sizes))
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def shares(sizes: list[int], index=None) -> list[tuple[int, list[int]]]:
    """``(share, its local indices)`` of the envs ``index`` (default: all), for shares of ``sizes`` envs."""
    bounds = np.cumsum([0] + list(sizes))
    index = range(int(bounds[-1])) if index is None else list(index)
    found = [(w, [i - bounds[w] for i in index if bounds[w] <= i < bounds[w + 1]]) for w in range(len(sizes))]
    return [(w, local) for w, local in found if local]


def merge_steps(replies: list) -> tuple:
    """Several shares' ``chunk_step`` replies as one (obs, rewards, terminated, truncated, info)."""
    obs = merge_obs([r[0] for r in replies])
    rewards, terminated, truncated = (np.concatenate([r[i] for r in replies]) for i in (1, 2, 3))
    info = {key: np.concatenate([r[4][key] for r in replies]) for key in replies[0][4] if key != "final_obs"}
    return obs, rewards, terminated, truncated, info


class SubprocChunkEnv:
    """``num_envs`` envs of ``env_cls(n, **kwargs)`` spread over ``workers`` processes; ``python``
    runs them with another interpreter (e.g. a simulator's private environment, whose packages
    this process must not load)."""

    def __init__(self, env_cls, num_envs: int, workers: int = 2, python: str | None = None, **kwargs):
        if not 1 <= workers <= num_envs:
            raise ValueError(f"env.workers must be between 1 and num_envs={num_envs}, got {workers}")
        self.num_envs = num_envs
        self.sizes = share_sizes(num_envs, workers)
        context = mp.get_context("spawn")  # no fork of a process holding torch threads
        self.pipes, self.processes = [], []
        default_python = multiprocessing.spawn.get_executable()
        try:
            if python:  # process-wide setting: restored as soon as the workers are started
                context.set_executable(python)
            for size in self.sizes:
                parent, child = context.Pipe()
                process = context.Process(target=_worker, args=(child, env_cls, size, kwargs, bool(python)), daemon=True)
                process.start()
                child.close()
                self.pipes.append(parent)
                self.processes.append(process)
        finally:
            context.set_executable(default_python)
        replies = self._receive()
        failed = [payload for kind, payload in replies if kind == "error"]
        if failed:
            self.close()
            raise failed[0]  # the env's own error (bad arguments, a missing extra), as in one process
        self.state_dim, self.action_dim, self.chunk_len, self.max_chunks = replies[0][1]

    def _receive(self) -> list:
        try:
            return [pipe.recv() for pipe in self.pipes]
        except (EOFError, ConnectionError) as error:
            codes = [p.exitcode for p in self.processes]
            raise RuntimeError(f"an env worker process died (exit codes {codes}): {error}") from None

    def reset(self, seeds: list[int]) -> dict:
        for pipe, part in zip(self.pipes, split(self.sizes, list(seeds))):
            pipe.send(("reset", part))
        return merge_obs(self._receive())

    def chunk_step(self, actions: np.ndarray):
        for pipe, part in zip(self.pipes, split(self.sizes, np.asarray(actions))):
            pipe.send(("step", part))
        return merge_steps(self._receive())

    def render(self, index=None) -> np.ndarray:
        frames = []
        for w, local in shares(self.sizes, index):
            self.pipes[w].send(("render", local))
            frames.append(self.pipes[w].recv())
        return np.concatenate(frames)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        self.pipes, self.processes = [], []
