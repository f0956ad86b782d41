"""Ray for what is not a tensor: simulator shares and reward sandboxes as Ray actors, on any node of
a Ray cluster (``env.backend=ray``, ``sandbox_backend=ray``; the ``[ray]`` extra).

Both sit behind the interfaces the trainer already uses (a chunk env, a :class:`~mmpost.sandbox.Sandbox`),
so a run gives the same rollouts and rewards as with local processes. A worker that dies (its node
lost, the process killed) is replaced by a new actor and its work re-run, counted:

- an env actor's episodes are replayed on the new actor from the wave's seeds and the actions sent
  since (the simulators are deterministic), then the interrupted call runs (``restarts``);
- a sandbox job is run again on a live actor (``stats["infra_retries"]``), as the local sandbox
  does when one of its fork-servers dies.

The run connects to the cluster ``RAY_ADDRESS`` names (``ray start --head`` on one node, ``ray start
--address HEAD:6379`` on the others), or starts a local Ray instance.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from mmpost.envs.subproc import merge_obs, merge_steps, share_sizes, shares, split

log = logging.getLogger(__name__)


def ray_module():
    """``ray``, connected to the cluster (``RAY_ADDRESS``) or a local instance started here."""
    try:
        import ray
    except ImportError as error:
        raise ImportError("env.backend=ray / sandbox_backend=ray need Ray: pip install 'mmpost[ray]'") from error
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray


def _lost(ray, error) -> bool:
    """Whether ``error`` says the actor is gone (not that the work inside it failed)."""
    return isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))


class _EnvActor:
    """One share of the envs, in a Ray worker process."""

    def __init__(self, env_cls, num_envs: int, kwargs: dict):
        self.env = env_cls(num_envs, **kwargs)

    def dims(self):
        return self.env.state_dim, self.env.action_dim, self.env.chunk_len, self.env.max_chunks

    def pid(self) -> int:
        return os.getpid()

    def call(self, method: str, payload):
        return getattr(self.env, method)(payload)

    def replay(self, seeds, actions: list) -> None:
        """Bring a fresh env to where a lost one was: the same reset, the same chunks."""
        self.env.reset(seeds)
        for chunk in actions:
            self.env.chunk_step(chunk)

    def close(self) -> None:
        self.env.close()


class RayChunkEnv:
    """``num_envs`` envs of ``env_cls(n, **kwargs)`` spread over ``workers`` Ray actors (each one
    batched env), behind the chunk-env interface. ``restarts``: actors replaced so far."""

    def __init__(self, env_cls, num_envs: int, workers: int = 1, **kwargs):
        if not 1 <= workers <= num_envs:
            raise ValueError(f"env.workers must be between 1 and num_envs={num_envs}, got {workers}")
        self.ray = ray_module()
        self.env_cls, self.kwargs, self.num_envs = env_cls, kwargs, num_envs
        self.sizes = share_sizes(num_envs, workers)
        self._actor_cls = self.ray.remote(num_cpus=0)(_EnvActor)  # (a share's simulation is light; Ray packs them)
        self.actors = [self._actor_cls.remote(env_cls, size, kwargs) for size in self.sizes]
        self.state_dim, self.action_dim, self.chunk_len, self.max_chunks = self.ray.get(self.actors[0].dims.remote())
        self.restarts = 0
        self._seeds: list = [None] * workers  # each share's wave so far: its reset and the chunks since
        self._actions: list[list] = [[] for _ in self.sizes]

    def _call(self, method: str, parts: list) -> list:
        refs = [actor.call.remote(method, part) for actor, part in zip(self.actors, parts)]
        replies = []
        for i, ref in enumerate(refs):
            try:
                replies.append(self.ray.get(ref))
            except Exception as error:  # noqa: BLE001 - the actor's loss is recovered, anything else raised
                if not _lost(self.ray, error):
                    raise
                replies.append(self._recover(i, method, parts[i], error))
        return replies

    def _recover(self, i: int, method: str, payload, error):
        """A new actor for share ``i``, brought to the lost one's state, then the interrupted call."""
        self.restarts += 1
        log.warning("env worker %d lost (%s): replacing it and replaying its %d chunks", i, type(error).__name__,
                    len(self._actions[i]))
        self.ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._actor_cls.remote(self.env_cls, self.sizes[i], self.kwargs)
        if self._seeds[i] is not None and method != "reset":
            self.ray.get(self.actors[i].replay.remote(self._seeds[i], self._actions[i]))
        return self.ray.get(self.actors[i].call.remote(method, payload))

    def reset(self, seeds: list[int]) -> dict:
        parts = split(self.sizes, list(seeds))
        self._seeds, self._actions = parts, [[] for _ in self.sizes]
        return merge_obs(self._call("reset", parts))

    def chunk_step(self, actions: np.ndarray):
        parts = split(self.sizes, np.asarray(actions))
        replies = self._call("chunk_step", parts)
        for history, part in zip(self._actions, parts):
            history.append(part)
        return merge_steps(replies)

    def render(self, index=None) -> np.ndarray:
        return np.concatenate([self.ray.get(self.actors[w].call.remote("render", local))
                               for w, local in shares(self.sizes, index)])

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.get(actor.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - closing: a lost actor has nothing left to close
                pass
            self.ray.kill(actor, no_restart=True)
        self.actors = []


class _SandboxActor:
    """A local :class:`~mmpost.sandbox.Sandbox` (its confinement included) in a Ray worker process."""

    def __init__(self, runner: str, limits, jobs_per_worker: int):
        from mmpost.sandbox import Sandbox

        self.box = Sandbox(runner, workers=1, limits=limits, jobs_per_worker=jobs_per_worker)

    def info(self) -> dict:
        return {"network": self.box.network, "capabilities": self.box.capabilities}

    def pid(self) -> int:
        return os.getpid()

    def map(self, codes: list[str]) -> list[dict]:
        return self.box.map(codes)


class RaySandbox:
    """:class:`~mmpost.sandbox.Sandbox`'s interface (``run``, ``map``, ``stats``, ``close``) over
    ``workers`` Ray actors, each a sandbox with one fork-server of its own on whichever node Ray puts it."""

    def __init__(self, runner: str, workers: int = 2, limits=None, jobs_per_worker: int = 8):
        from mmpost.sandbox import Limits

        self.ray = ray_module()
        self.runner, self.limits, self.jobs_per_worker = runner, limits or Limits(), jobs_per_worker
        self._actor_cls = self.ray.remote(num_cpus=0)(_SandboxActor)
        self.actors = [self._new_actor() for _ in range(workers)]
        info = self.ray.get(self.actors[0].info.remote())
        self.network, self.capabilities = info["network"], info["capabilities"]
        self.capacity = workers * jobs_per_worker
        self.stats = {"executed": 0, "infra_retries": 0}

    def _new_actor(self):
        return self._actor_cls.remote(self.runner, self.limits, self.jobs_per_worker)

    def run(self, code: str) -> dict:
        return self.map([code])[0]

    def map(self, codes: list[str]) -> list[dict]:
        """Run many programs on the actors (an even share each), replies in input order; the jobs of
        an actor that is lost run again on its replacement."""
        replies: list = [None] * len(codes)
        pending = list(range(len(codes)))
        for attempt in range(4):
            shares = [pending[i::len(self.actors)] for i in range(len(self.actors))]
            refs = [(i, share, self.actors[i].map.remote([codes[j] for j in share]))
                    for i, share in enumerate(shares) if share]
            pending = []
            for i, share, ref in refs:
                try:
                    for j, reply in zip(share, self.ray.get(ref)):
                        replies[j] = reply
                except Exception as error:  # noqa: BLE001 - the actor's loss is recovered, anything else raised
                    if not _lost(self.ray, error) or attempt == 3:
                        raise
                    log.warning("sandbox worker %d lost (%s): replacing it and running its %d jobs again", i,
                                type(error).__name__, len(share))
                    self.ray.kill(self.actors[i], no_restart=True)
                    self.actors[i] = self._new_actor()
                    self.stats["infra_retries"] += len(share)
                    pending += share
            if not pending:
                break
        self.stats["executed"] += len(codes)
        return replies

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> "RaySandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
