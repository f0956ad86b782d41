"""reach: a MuJoCo arm must touch the target its language instruction names.

Few-shot SFT on scripted expert demonstrations (flow matching), then online RL in the
simulator with the flow policy's Flow-SDE or Flow-Noise log-probs (pi_RL). Rows are initial
states: ``{"seed": int, "instruction": str}``; episodes from the same seed form a GRPO group.
Metric: held-out ``success`` (unseen initial states, and an unseen instruction phrasing for
half of them), with the ODE sampler ("greedy") and the stochastic one ("sampled").

Named recipes (``--recipe NAME``): ``flow_sde_ppo`` (default), ``flow_noise_ppo``,
``flow_sde_grpo``, ``flow_noise_grpo``.
"""

from __future__ import annotations

import numpy as np

from mmpost.config import DataConfig, EnvConfig, EvalConfig, FlowConfig, TrainConfig
from mmpost.stages.spec import Advantage, Optim, PolicyGradient, Sampling, Stage
from mmpost.envs.base import expert_demonstrations, make_env, split_seeds

DEMO_NOISE = 0.3  # std of the noise on the expert's executed actions: imperfect demonstrations
DEMO_SEED_OFFSET = 5_000_000  # demonstrations come from their own initial states

# pi_RL's GRPO: groups of episodes from one initial state, groups that all succeed or all fail dropped
_GRPO = {"rl.advantage.estimator": "group", "rl.batch_size": 16, "rl.sampling.group_size": 8, "rl.filter.reward_range": [0.1, 0.9]}


# pi_RL's std range [0.08, 0.16] suits a pretrained pi0 whose flow is nearly deterministic; the
# few-shot policy here spreads its noise far more, and with that range RL barely moved in 800
# iterations (held-out 0.29 -> 0.31), while [0.3, 0.6] reached 0.85 (README, "Measured").
_FLOW_NOISE = {"flow.noise_method": "flow_noise", "flow.noise_std_range": [0.3, 0.6], "rl.optim.lr": 5e-5}


class Reach:
    """The reach task: data, simulator, policy, reward, metric and recipes."""

    name = "reach"
    default_model = (  # `mmpost list models`
        "flow-matching action policy (flow.backbone: mlp, timm:NAME on camera images, or vlm = tiny "
        "Qwen2-VL prefix); --model: a saved policy directory")
    policy_kind = "flow"  # token-only methods (preference pairs, rejection sampling) are refused before building
    rewards = ["success"]
    metric = "success"
    ood = "episodes whose instruction uses a phrasing never trained (half the held-out ones do)"
    recipes = {
        "flow_sde_ppo": {"flow.noise_method": "flow_sde"},
        "flow_noise_ppo": {**_FLOW_NOISE},
        "flow_sde_grpo": {"flow.noise_method": "flow_sde", **_GRPO},
        "flow_noise_grpo": {**_FLOW_NOISE, **_GRPO},
    }

    @staticmethod
    def default_config() -> TrainConfig:
        return TrainConfig(
            task="reach",
            stages=[
                Stage(name="sft", kind="sft", data="demos", steps=2000, batch_size=64,
                      optim=Optim(lr=1e-3, schedule="cosine")),
                # PPO as pi_RL: GAE 0.99/0.95, clip 0.2, dual-clip 3, critic with its own learning rate
                Stage(name="rl", kind="rl", steps=800, batch_size=128,
                      sampling=Sampling(group_size=1),
                      optim=Optim(lr=1e-4, schedule="constant", value_lr=1e-3),
                      advantage=Advantage(estimator="gae", gamma=0.99, lam=0.95),
                      pg=PolicyGradient(epochs=2, minibatches=2, dual_clip=3.0, clip_low=0.2, clip_high=0.2)),
            ],
            data=DataConfig(train_size=100_000, eval_size=256, demos=200),
            eval=EvalConfig(sampled=True, samples_to_save=4, batch_size=128),
            env=EnvConfig(num_envs=128, chunk_len=4, max_chunks=8, obs="state"),
            # noise level a = 1 rather than pi_RL's 0.5: with 0.5 RL took 800 iterations to gain what
            # a = 1 gains in 300 here (held-out success; README, "Measured")
            flow=FlowConfig(noise_method="flow_sde", noise_level=1.0, flow_steps=4, action_horizon=8),
            checkpoint_every=50)

    def __init__(self, cfg: TrainConfig, reward=None):
        self.cfg = cfg

    def policy(self, device="cpu"):
        """A :class:`~mmpost.adapters.flow_policy.FlowActionPolicy` acting in the configured env."""
        from mmpost.adapters.flow_policy import FlowActionPolicy

        vlm = self.cfg.flow.vlm
        if self.cfg.flow.backbone == "vlm" and not vlm:  # the tiny Qwen2-VL, trained tokenizer on the phrasings
            from mmpost.models.tiny_qwen2vl import cached_tiny_qwen2vl

            vlm = str(cached_tiny_qwen2vl("tiny-qwen2vl-reach", lambda: [t.format(c) for t in
                                          ("reach the {} target", "touch the {} ball", "move to the {} one")
                                          for c in ("red", "green", "blue", "yellow")] * 20,
                                          preset="tiny", vocab_size=512, image_side=self.cfg.env.image_size, seed=0))
        return FlowActionPolicy.build(make_env(self.cfg.env), self.cfg.flow, self.cfg.env, path=self.cfg.model,
                                      vlm_path=vlm, device=device, demos=lambda: self.rows("demos"))

    # ------------------------------------------------------------------ data

    def rows(self, split: str) -> list[dict]:
        """``train`` / ``heldout`` / ``ood`` initial states, or ``demos`` (expert (observation, chunk) pairs)."""
        if split == "demos":
            return self.demonstrations()
        if split == "train":  # the env derives everything from the seed
            return [{"seed": s} for s in split_seeds("train", self.cfg.data.train_size)]
        from mmpost.envs.reach import episode_spec

        return [{"seed": s, "instruction": episode_spec(s)["instruction"]}
                for s in split_seeds(split, self.cfg.data.eval_size)]

    def demonstrations(self) -> list[dict]:
        """(observation, next ``action_horizon`` expert actions) at every control step of
        ``data.demos`` noisy scripted-expert episodes; a user's JSONL (``state``,
        ``instruction``, ``actions``) when ``data.path`` is set, or LIBERO's HDF5 demonstration file
        (``.hdf5``, with ``--env libero:...`` and ``env.obs=image``)."""
        if self.cfg.data.path.endswith((".hdf5", ".h5")):  # LIBERO's demonstration files
            from mmpost.envs.libero import read_demonstrations

            return read_demonstrations(self.cfg.data.path, self.cfg.flow.action_horizon)
        if self.cfg.data.path:
            return user_demonstrations(self.cfg.data, self.cfg.flow.action_horizon)
        return expert_demonstrations(self.cfg.env, self.cfg.data.demos, self.cfg.flow.action_horizon, DEMO_NOISE,
                                     seed=self.cfg.seed, first_episode_seed=DEMO_SEED_OFFSET)


def user_demonstrations(data_cfg, horizon: int) -> list[dict]:
    """A user's demonstrations: a LeRobot dataset folder (every frame, the next ``horizon`` actions;
    :mod:`mmpost.data.lerobot`), or JSONL (or Parquet, datasets dir) rows of ``state``, ``instruction``,
    ``actions`` (the next ``flow.action_horizon`` actions)."""
    from mmpost.data.jsonl import DataError, read_jsonl
    from mmpost.data.lerobot import is_lerobot, read_lerobot

    if is_lerobot(data_cfg.path):
        return read_lerobot(data_cfg.path, horizon, data_cfg.columns)

    def convert(r: dict) -> dict:
        try:
            arrays = {k: np.asarray(r[k], np.float32) for k in ("state", "actions")}
        except (TypeError, ValueError) as error:
            raise DataError(f"{r['source']}: 'state' and 'actions' must be numeric arrays ({error})") from None
        if not all(np.isfinite(a).all() for a in arrays.values()):
            raise DataError(f"{r['source']}: 'state' or 'actions' holds NaN or inf")
        return {**arrays, "instruction": r["instruction"]}

    return list(read_jsonl(data_cfg.path, required={"state": list, "instruction": str, "actions": list},
                           skip_bad_rows=data_cfg.skip_bad_rows, convert=convert, columns=data_cfg.columns))
