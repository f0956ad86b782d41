"""``FlowActionPolicy``: a flow-matching VLA acting in a chunk env, as a :class:`Policy`.

``rollout(rows, n)`` runs ``n`` episodes from each row's seed (one GRPO group per seed) in the
task's vectorised simulator, batching the policy over all live envs at every chunk. Each chunk
is sampled by K flow steps; the whole chain ``x_1 .. x_0`` and which steps were stochastic are
stored, so :meth:`logprobs` recomputes the sampling log-probs exactly under current parameters:

* ``flow_sde``: one uniformly chosen step per chunk is stochastic (the rest ODE); log-prob =
  that step's Gaussian (pi_RL's two-layer MDP).
* ``flow_noise``: every step stochastic with the learned std; log-prob = mean over the K + 1
  terms of the chain (initial noise included), as RLinf's ``joint_logprob``.
* ``greedy`` (evaluation): plain ODE.

Only the executed part of a chunk (first ``chunk_len`` steps) enters the log-prob. With
``logprob_level="chunk"`` an action step of the Rollout is a whole chunk (elements summed: one
ratio per chunk); with ``"element"`` it is one action element (one ratio each).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmpost.algos.flow import flow_matching_loss, gaussian_logprob, sde_sigmas, timesteps, transition
from mmpost.config import EnvConfig, FlowConfig
from mmpost.envs.base import ReplacesWorkers
from mmpost.models.flow_action import FlowActionModel, as_tensor_obs
from mmpost.sharding import all_done, is_sharded
from mmpost.types import Rollout

DEFAULT_IMAGE_BACKBONE = "timm:resnet10t"
GREEDY, ALL_STEPS = -2, -1  # values of FlowActions.stochastic_step besides a step index


@dataclass
class FlowActions:
    """Everything :meth:`FlowActionPolicy.logprobs` needs, per episode and chunk (``C`` chunks)."""

    state: torch.Tensor  # [N, C, D]
    image: torch.Tensor | None  # [N, C, h, w, 3] uint8 (image observations only)
    instruction: list[str]  # [N]
    chains: torch.Tensor  # [N, C, K + 1, H, A] x at every flow time, noise first
    stochastic_step: torch.Tensor  # [N, C] flow_sde: the stochastic step; ALL_STEPS / GREEDY otherwise
    alive: torch.Tensor  # [N, C] bool, real transitions

    def __getitem__(self, index: torch.Tensor) -> "FlowActions":
        return FlowActions(self.state[index], None if self.image is None else self.image[index],
                           [self.instruction[i] for i in index.tolist()], self.chains[index],
                           self.stochastic_step[index], self.alive[index])

    @staticmethod
    def concat(parts: list["FlowActions"]) -> "FlowActions":
        """Episodes of several rollouts (all of ``max_chunks`` chunks) as one."""
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        return FlowActions(cat("state"), None if parts[0].image is None else cat("image"),
                           [i for p in parts for i in p.instruction], cat("chains"), cat("stochastic_step"),
                           cat("alive"))

    def flat(self):
        """Observations, chains and step choices of the real transitions, flattened."""
        alive = self.alive
        instructions = [self.instruction[i] for i, c in alive.nonzero().tolist()]
        obs = {"state": self.state[alive], "instruction": instructions}
        if self.image is not None:
            obs["image"] = self.image[alive]
        return obs, self.chains[alive], self.stochastic_step[alive]


def state_statistics(rows: list[dict]) -> dict:
    """Per-dimension mean and std of the rows' states (std at least 1e-2: a dimension constant in the
    demonstrations must not blow up when RL visits other values)."""
    states = np.stack([np.asarray(r["state"], np.float32) for r in rows])
    return {"state_mean": states.mean(0).tolist(), "state_std": np.maximum(states.std(0), 1e-2).tolist()}


class FlowActionPolicy:
    """A :class:`FlowActionModel` plus the env it acts in.

    Args:
        model: the network.
        env: a chunk env (:mod:`mmpost.envs.base`); episodes beyond ``env.num_envs`` run in waves.
        flow: sampling settings (noise method, K, noise level, log-prob level).
        video_episodes: greedy rollouts record frames of this many first episodes (for GIFs).
        device: where the model lives.
    """

    def __init__(self, model: FlowActionModel, env, flow: FlowConfig, video_episodes: int = 0, device="cpu"):
        if env.chunk_len > model.horizon:
            raise ValueError(f"env.chunk_len={env.chunk_len} exceeds flow.action_horizon={model.horizon}")
        self.model, self.env, self.flow = model, env, flow
        self.device = torch.device(device)
        self.video_episodes = video_episodes
        self.steps_per_transition = 1 if flow.logprob_level == "chunk" else env.chunk_len * model.action_dim

    @classmethod
    def build(cls, env, flow: FlowConfig, env_cfg: EnvConfig, path: str = "", vlm_path: str = "",
              device="cpu", demos=None) -> "FlowActionPolicy":
        """A fresh model sized for ``env`` (or the one saved in ``path``). ``demos``: a callable
        returning the demonstration rows, read for the state statistics when ``flow.normalize_state``."""
        backbone = flow.backbone or ("mlp" if env_cfg.obs == "state" else DEFAULT_IMAGE_BACKBONE)
        if path:
            model = FlowActionModel.from_pretrained(path)
        else:
            model = FlowActionModel({
                "state_dim": env.state_dim, "action_dim": env.action_dim, "backbone": backbone,
                "vlm": vlm_path, "hidden": flow.hidden, "action_horizon": flow.action_horizon,
                "image_size": env_cfg.image_size, "noise_std_range": flow.noise_std_range,
                "detach_critic": flow.detach_critic, **(state_statistics(rows) if flow.normalize_state and demos
                                                        and (rows := demos()) else {})})
        if (model.config["backbone"] != "mlp") != (env_cfg.obs == "image"):
            raise ValueError(f"backbone {model.config['backbone']!r} does not match env.obs={env_cfg.obs!r}: "
                             "mlp reads state observations, timm:NAME and vlm read camera images")
        for encoder in (model.image, model.vlm):
            if encoder is not None and not flow.train_backbone:
                encoder.requires_grad_(False)
        return cls(model.to(device), env, flow, env_cfg.video_episodes, device)

    def __deepcopy__(self, memo):  # a frozen reference copies the network, never the simulator
        return FlowActionPolicy(copy.deepcopy(self.model, memo), self.env, self.flow, 0, self.device)

    # ------------------------------------------------------------------ one chunk

    def _sample(self, context: torch.Tensor, greedy: bool, start: torch.Tensor | None = None):
        """Sample chunks for a batch of contexts: (chain [B, K+1, H, A], stochastic step [B],
        per-element log-prob [B, chunk_len, A] of the executed part). ``start``: the initial noise
        [B, H, A] (default: fresh draws)."""
        K, batch = self.flow.flow_steps, context.shape[0]
        grid, sigmas = timesteps(K).tolist(), sde_sigmas(K, self.flow.noise_level).tolist()
        shape = (batch, self.model.horizon, self.model.action_dim)
        x = torch.randn(shape, device=self.device, dtype=context.dtype) if start is None else start
        if greedy:
            step = torch.full((batch,), GREEDY, device=self.device)
        elif self.flow.noise_method == "flow_sde":
            step = torch.randint(0, K, (batch,), device=self.device)
        else:
            step = torch.full((batch,), ALL_STEPS, device=self.device)
        learned_noise = step[0] == ALL_STEPS
        chain = [x]
        logp = gaussian_logprob(x, torch.zeros_like(x), torch.ones_like(x)) if learned_noise else torch.zeros_like(x)
        for k in range(K):
            t, delta = grid[k], grid[k] - grid[k + 1]
            velocity, hidden = self.model.velocity_and_hidden(x, torch.full((batch,), t, device=self.device,
                                                                            dtype=x.dtype), context)
            if learned_noise:
                mean, std = transition(x, velocity, t, delta, "noise", noise_std=self.model.noise_std(hidden))
            else:  # ODE, except the one Flow-SDE step chosen for each sample (none when greedy)
                mean, std = transition(x, velocity, t, delta, "ode")
                stochastic = (step == k)[:, None, None]
                if stochastic.any():
                    sde_mean, sde_std = transition(x, velocity, t, delta, "sde", sigma=sigmas[k])
                    mean, std = torch.where(stochastic, sde_mean, mean), torch.where(stochastic, sde_std, std)
            x = mean + std * torch.randn_like(x)
            logp = logp + gaussian_logprob(x, mean, std)
            chain.append(x)
        if learned_noise:  # RLinf's joint log-prob: the mean over the K + 1 terms of the chain
            logp = logp / (K + 1)
        logp = logp[:, :self.env.chunk_len]
        return torch.stack(chain, 1), step, logp

    def _reduce(self, element_logp: torch.Tensor) -> torch.Tensor:
        """[B, chunk_len, A] -> [B, steps_per_transition] per the configured log-prob level."""
        return element_logp.sum((1, 2))[:, None] if self.steps_per_transition == 1 else element_logp.flatten(1)

    # ------------------------------------------------------------------ Policy contract

    @torch.no_grad()
    def rollout(self, batch: list[dict], n: int, *, temperature: float = 1.0, greedy: bool = False) -> Rollout:
        """``n`` episodes from each row's ``seed``; ``greedy`` samples by the ODE (evaluation)."""
        seeds = [int(row["seed"]) for row in batch for _ in range(n)]
        group = torch.arange(len(batch)).repeat_interleave(n)
        waves = [self._episodes(seeds[i:i + self.env.num_envs], greedy, record=greedy and i == 0)
                 for i in range(0, len(seeds), self.env.num_envs)]
        cat = lambda key: torch.cat([w[key] for w in waves])  # noqa: E731
        actions = FlowActions(cat("state"), cat("image") if waves[0]["image"] is not None else None,
                              sum((w["instruction"] for w in waves), []), cat("chains"), cat("step"), cat("alive"))
        outputs = sum((w["outputs"] for w in waves), [])
        alive = actions.alive.float()
        metrics = {key: sum(w["time"][key] for w in waves) for key in ("time/simulate", "time/infer")}
        if isinstance(self.env, ReplacesWorkers) and self.env.restarts:  # Ray env actors replaced, episodes replayed
            metrics["env/worker_restarts"] = float(self.env.restarts)
        metrics.update({"env/success": float(np.mean([o["success"] for o in outputs])),
                        "env/episode_chunks": float(alive.sum(1).mean()),
                        "env/steps": float(alive.sum() * self.env.chunk_len)})
        return Rollout(
            logprobs=cat("logprobs"), mask=alive.repeat_interleave(self.steps_per_transition, dim=1),
            group=group, outputs=outputs, prompts=[o["instruction"] for o in outputs],
            columns={"seed": seeds}, actions=actions, temperature=temperature,
            step_rewards=cat("rewards"), values=cat("values"), bootstrap=cat("bootstrap"), alive=alive,
            metrics=metrics)

    def _episodes(self, seeds: list[int], greedy: bool, record: bool) -> dict:
        """Run one wave of episodes (at most ``env.num_envs``) to the end."""
        env, n, C = self.env, len(seeds), self.env.max_chunks
        padded = seeds + [seeds[-1]] * (env.num_envs - n)  # unused envs replay the last seed
        clock = {"time/simulate": 0.0, "time/infer": 0.0}
        started = time.perf_counter()
        recording = record and self.video_episodes > 0 and hasattr(env, "record")
        if recording:
            env.record(list(range(min(self.video_episodes, n))))
        obs = env.reset(padded)
        clock["time/simulate"] += time.perf_counter() - started
        H, A, K = self.model.horizon, self.model.action_dim, self.flow.flow_steps
        dtype = next(self.model.parameters()).dtype
        out = {"state": torch.zeros(n, C, env.state_dim, dtype=dtype), "chains": torch.zeros(n, C, K + 1, H, A, dtype=dtype),
               "step": torch.full((n, C), GREEDY), "alive": torch.zeros(n, C, dtype=torch.bool),
               "logprobs": torch.zeros(n, C * self.steps_per_transition, dtype=dtype),
               "rewards": torch.zeros(n, C), "values": torch.zeros(n, C), "bootstrap": torch.zeros(n),
               "image": None, "instruction": list(obs["instruction"][:n])}
        if "image" in obs:
            out["image"] = torch.zeros(n, C, *tuple(obs["image"].shape)[1:], dtype=torch.uint8)
        # greedy (ODE) chunks depend only on their initial noise: draw it from the episode's seed, so an
        # evaluation is repeatable and two models meet the same noise on the same episode (paired)
        noise = [torch.Generator().manual_seed(int(s)) for s in padded] if greedy else None
        done = np.zeros(env.num_envs, dtype=bool)
        terminated = np.zeros(env.num_envs, dtype=bool)
        success = np.zeros(env.num_envs, dtype=bool)
        for c in range(C):
            if done[:n].all():  # a sharded model: this process's episodes ended, others' run on
                self._keep_in_step(obs, dtype)
                continue
            live = np.flatnonzero(~done)
            started = time.perf_counter()
            inputs, context = self._encode(obs, live, dtype)
            start = None if noise is None else torch.stack(
                [torch.randn(H, A, generator=noise[i]) for i in live]).to(self.device, dtype)
            chain, step, logp = self._sample(context, greedy, start)
            values = self.model.value(context)
            actions = np.zeros((env.num_envs, env.chunk_len, A), dtype=np.float32)
            actions[live] = chain[:, -1, :env.chunk_len].float().cpu().numpy()
            clock["time/infer"] += time.perf_counter() - started
            started = time.perf_counter()
            obs, rewards, term, trunc, info = env.chunk_step(actions)
            clock["time/simulate"] += time.perf_counter() - started
            kept = live[live < n]
            rows = torch.as_tensor(np.flatnonzero(live < n))
            out["state"][kept, c] = inputs["state"][rows].cpu()
            if out["image"] is not None:
                out["image"][kept, c] = inputs["image"][rows].cpu()
            out["chains"][kept, c] = chain[rows].cpu()
            out["step"][kept, c] = step[rows].cpu()
            out["alive"][kept, c] = True
            span = slice(c * self.steps_per_transition, (c + 1) * self.steps_per_transition)
            out["logprobs"][kept, span] = self._reduce(logp)[rows].cpu()
            out["values"][kept, c] = values[rows].float().cpu()
            out["rewards"][kept, c] = torch.as_tensor(np.asarray(rewards, dtype=np.float32)[kept].sum(-1))
            terminated |= np.asarray(term, dtype=bool)
            done |= np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool)
            success |= np.asarray(info["success"], dtype=bool)
            if all_done(bool(done[:n].all()), self.model):
                break
        truncated = np.flatnonzero(~terminated[:n])
        if len(truncated):  # time limit: bootstrap from the critic's value of the last state
            out["bootstrap"][truncated] = self.model.value(self._encode(obs, truncated, dtype)[1]).float().cpu()
        elif is_sharded(self.model):
            self.model.value(self._encode(obs, np.array([0]), dtype)[1])  # (in step with the other processes)
        frames = env.frames() if recording else {}
        out["outputs"] = [{"success": bool(success[i]), "return": float(out["rewards"][i].sum()),
                           "chunks": int(out["alive"][i].sum()), "instruction": out["instruction"][i],
                           "seed": seeds[i], **({"frames": frames[i]} if i in frames else {})} for i in range(n)]
        out["time"] = clock
        return out

    def _encode(self, obs: dict, rows: np.ndarray, dtype) -> tuple[dict, torch.Tensor]:
        """The observations of env ``rows`` as tensors, and their contexts."""
        inputs = as_tensor_obs({k: (v[rows] if not isinstance(v, list) else [v[i] for i in rows])
                                for k, v in obs.items()}, self.device, dtype)
        return inputs, self.model.encode(inputs)

    def _keep_in_step(self, obs: dict, dtype) -> None:
        """The forward passes of one chunk, results unused, leaving the random streams as they were: a
        sharded model's forward passes are collective, so a process whose episodes have ended keeps
        calling it until every process's have."""
        with torch.random.fork_rng(devices=[]):
            context = self._encode(obs, np.array([0]), dtype)[1]
            self._sample(context, greedy=True)
            self.model.value(context)

    def _transition_logprobs(self, actions: FlowActions) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element log-probs [M, chunk_len, A] of the M real transitions, and their contexts."""
        obs, chains, step = actions.flat()
        obs = as_tensor_obs(obs, self.device, chains.dtype)
        chains, step = chains.to(self.device), step.to(self.device)
        context = self.model.encode(obs)
        K, M = self.flow.flow_steps, chains.shape[0]
        grid = timesteps(K).to(self.device, chains.dtype)
        if self.flow.noise_method == "flow_sde":  # only the stochastic step has a density
            k = step.clamp(min=0)
            t, delta = grid[k], grid[k] - grid[k + 1]
            x, target = chains[torch.arange(M), k], chains[torch.arange(M), k + 1]
            velocity, _ = self.model.velocity_and_hidden(x, t, context)
            sigma = sde_sigmas(K, self.flow.noise_level).to(self.device, chains.dtype)[k]
            b = lambda v: v[:, None, None]  # noqa: E731
            mean, std = transition(x, velocity, b(t), b(delta), "sde", sigma=b(sigma))
            logp = gaussian_logprob(target, mean, std)
        else:  # every step, batched: [M * K] transitions
            x = chains[:, :K].reshape(M * K, *chains.shape[2:])
            t = grid[:K].repeat(M)
            delta = (grid[:K] - grid[1:]).repeat(M)
            velocity, hidden = self.model.velocity_and_hidden(x, t, context.repeat_interleave(K, 0))
            b = lambda v: v[:, None, None]  # noqa: E731
            mean, std = transition(x, velocity, b(t), b(delta), "noise", noise_std=self.model.noise_std(hidden))
            steps = gaussian_logprob(chains[:, 1:].reshape(M * K, *chains.shape[2:]), mean, std)
            start = gaussian_logprob(chains[:, 0], torch.zeros_like(chains[:, 0]), torch.ones_like(chains[:, 0]))
            logp = (start + steps.view(M, K, *chains.shape[2:]).sum(1)) / (K + 1)
        return logp[:, :self.env.chunk_len], context

    def logprobs(self, rollout: Rollout) -> torch.Tensor:
        """[N, T] log-probs of the rollout's stored chains under the current parameters (with grad)."""
        actions: FlowActions = rollout.actions
        logp, _ = self._transition_logprobs(actions)
        out = torch.zeros(*actions.alive.shape, self.steps_per_transition, device=self.device, dtype=logp.dtype)
        out[actions.alive.to(self.device)] = self._reduce(logp)
        return out.flatten(1)

    def enable_value_head(self) -> None:
        """Nothing to attach: the flow model always carries its critic (``FlowActionModel.value``)."""

    def values(self, rollout: Rollout) -> torch.Tensor:
        """[N, C] critic values of each transition's start state (with grad)."""
        actions: FlowActions = rollout.actions
        obs, _, _ = actions.flat()
        values = self.model.value(self.model.encode(as_tensor_obs(obs, self.device, actions.chains.dtype)))
        out = torch.zeros(actions.alive.shape, device=self.device, dtype=values.dtype)
        out[actions.alive.to(self.device)] = values
        return out

    def sft_loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict]:
        """Flow-matching regression on the rows' demonstration chunks (``actions`` [H, A])."""
        obs = as_tensor_obs({"state": np.stack([r["state"] for r in batch]),
                             "instruction": [r["instruction"] for r in batch],
                             **({"image": np.stack([r["image"] for r in batch])} if "image" in batch[0] else {})},
                            self.device)
        actions = torch.as_tensor(np.stack([r["actions"] for r in batch]), dtype=torch.float32, device=self.device)
        context = self.model.encode(obs)
        loss = flow_matching_loss(lambda x, t: self.model.velocity_and_hidden(x, t, context)[0], actions)
        return loss, {"samples": float(len(batch))}


    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)

    def close(self) -> None:
        self.env.close()
