"""maniskill: a Panda arm in ManiSkill 3 (default PickCube-v1) — pick up the cube, carry it to the goal.

The reach task's method on a real manipulation benchmark, sized for CPU physics (pi_RL's recipe):
few-shot SFT of the flow-matching action policy on noisy scripted-expert demonstrations, then PPO
with Flow-SDE log-probs in the simulator, success from ManiSkill's own ``info["success"]``. Needs
the ``maniskill`` extra and a Vulkan device (``mmpost setup maniskill`` on a CPU-only machine);
``--env maniskill:ENV_ID`` picks another ManiSkill task (demonstrations then from ``data.path``).

Rows are initial states ``{"seed": int}``; held-out episodes start from unseen seeds (ManiSkill
draws the cube's pose and the goal from the seed). Demonstrations are cached under
``MMPOST_HOME/data``. Named recipes: as reach's (``flow_sde_ppo`` default, ``flow_noise_ppo``,
``flow_sde_grpo``, ``flow_noise_grpo``).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from mmpost.checkpoint import write_atomic
from mmpost.config import DataConfig, EnvConfig, EvalConfig, FlowConfig, TrainConfig
from mmpost.envs.base import expert_demonstrations, make_env, split_seeds
from mmpost.stages.spec import Advantage, Optim, PolicyGradient, Sampling, Stage
from mmpost.tasks.reach import DEMO_SEED_OFFSET, Reach, user_demonstrations

log = logging.getLogger(__name__)
DEMO_NOISE = 0.2  # std of the noise on the expert's executed actions (0.3 drops the cube too often)


class ManiSkill:
    """The maniskill task: ManiSkill scene, flow policy, success reward, held-out success metric."""

    name = "maniskill"
    default_model = ("flow-matching action policy on ManiSkill's state (flow.backbone: mlp; timm:NAME on camera "
                     "images); --model: a saved policy directory")
    policy_kind = "flow"
    rewards = ["success"]
    metric = "success"
    recipes = Reach.recipes

    @staticmethod
    def default_config() -> TrainConfig:
        return TrainConfig(
            task="maniskill",
            stages=[
                Stage(name="sft", kind="sft", data="demos", steps=1000, batch_size=64,
                      optim=Optim(lr=1e-3, schedule="cosine")),
                # 128 episodes an iteration at lr 2e-5 (README "ManiSkill": 32 episodes at 1e-4 or 2e-5 left
                # the policy where SFT put it, ~6 successes a batch being mostly noise); 4 minibatches of 32
                Stage(name="rl", kind="rl", steps=150, batch_size=128, sampling=Sampling(group_size=1),
                      optim=Optim(lr=2e-5, schedule="constant", value_lr=1e-3),
                      advantage=Advantage(estimator="gae", gamma=0.99, lam=0.95),
                      pg=PolicyGradient(epochs=2, minibatches=4, dual_clip=3.0, clip_low=0.2, clip_high=0.2)),
            ],
            # 64 demonstrations: SFT reached held-out success 0.22 (32: 0.09; README "ManiSkill"); 128 held-out
            # episodes: one evaluation's standard error ~0.04
            data=DataConfig(train_size=100_000, eval_size=128, demos=64),
            eval=EvalConfig(sampled=False, samples_to_save=4, batch_size=32),
            # PickCube's expert needs ~21 control steps; 12 chunks of 4 leave room for a slower policy
            env=EnvConfig(name="maniskill:PickCube-v1", num_envs=128, chunk_len=4, max_chunks=12, obs="state"),
            # noise level 0.2, below pi_RL's 0.5: grasping needs centimetre precision; at 0.5 sampled success
            # was a third of greedy, at 0.2 close to it
            flow=FlowConfig(noise_method="flow_sde", noise_level=0.2, flow_steps=4, action_horizon=8,
                            normalize_state=True),
            checkpoint_every=10)

    def __init__(self, cfg: TrainConfig, reward=None):
        self.cfg = cfg

    def policy(self, device="cpu"):
        """A :class:`~mmpost.adapters.flow_policy.FlowActionPolicy` acting in the configured ManiSkill env."""
        from mmpost.adapters.flow_policy import FlowActionPolicy

        return FlowActionPolicy.build(make_env(self.cfg.env), self.cfg.flow, self.cfg.env, path=self.cfg.model,
                                      vlm_path=self.cfg.flow.vlm, device=device, demos=self._statistics_rows)

    def _statistics_rows(self) -> list[dict]:
        """The demonstrations the state statistics come from; none (no normalisation) for an env without
        an expert and no ``data.path``, which can only train by RL."""
        from mmpost.envs.maniskill import ManiSkillChunkEnv

        if self.cfg.data.path or ManiSkillChunkEnv.has_expert(self.cfg.env.name.partition(":")[2]):
            return self.rows("demos")
        log.warning("flow.normalize_state: no demonstrations for %s, so the state is not normalised", self.cfg.env.name)
        return []

    def rows(self, split: str) -> list[dict]:
        """``train`` / ``heldout`` initial states, or ``demos`` (expert (observation, chunk) pairs)."""
        if split == "demos":
            return self.demonstrations()
        size = self.cfg.data.train_size if split == "train" else self.cfg.data.eval_size
        return [{"seed": s} for s in split_seeds(split, size)]

    def demonstrations(self) -> list[dict]:
        """``data.demos`` noisy scripted-expert episodes (cached), or a user's JSONL (``data.path``)."""
        if self.cfg.data.path:
            return user_demonstrations(self.cfg.data, self.cfg.flow.action_horizon)
        from mmpost.models.tiny_qwen2vl import mmpost_home

        env, n, horizon = self.cfg.env, self.cfg.data.demos, self.cfg.flow.action_horizon
        key = json.dumps(["v2", env.name, env.obs, env.image_size, env.chunk_len * env.max_chunks, n, horizon,
                          DEMO_NOISE, self.cfg.seed], sort_keys=True)  # v2: first observations without stale grasps
        cache = mmpost_home() / "data" / f"maniskill-demos-{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz"
        if cache.exists():
            with np.load(cache) as saved:
                return _rows(saved)
        rows = expert_demonstrations(env, n, horizon, DEMO_NOISE, seed=self.cfg.seed,
                                     first_episode_seed=DEMO_SEED_OFFSET)
        arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, lambda tmp: np.savez(tmp, **arrays))  # a crash never leaves a half-written cache
        return rows


def _rows(arrays) -> list[dict]:
    columns = {k: arrays[k] for k in arrays.files}
    return [{k: (str(v[i]) if k == "instruction" else v[i]) for k, v in columns.items()}
            for i in range(len(columns["state"]))]
