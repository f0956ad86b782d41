"""Named methods: each a recipe over the task's default stages, never a new trainer.

A recipe renames or re-kinds the default ``sft`` / ``rl`` stages and sets the terms the paper uses
(``mmpost list recipes`` prints this table; README "Methods" shows it with the tests that check
each term's formula). Applied by :func:`mmpost.build_config`; user ``--set`` overrides come after,
addressed by the stage names the recipe leaves (``dpo.preference.beta=0.05`` after ``--recipe dpo``).

Adding a method = one entry here. Token-only terms (preference pairs, rejection sampling, token
weights) fail before any model is built on tasks whose policy is not a token model.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from mmpost.types import task_member


@dataclass(frozen=True)
class Recipe:
    """``overrides`` are dotted config keys on the task's default config (``rl.*`` / ``sft.*``);
    ``keep`` lists the stages kept (default: all); ``rename`` maps a stage to its new name; ``split``
    replaces a stage by copies of it under new names (which ``overrides`` then address); a
    callable ``overrides`` receives the task class (for task-specific values such as what counts as
    a solved sample). ``fidelity`` says whether the recipe is its paper or how it differs."""

    paper: str
    terms: str
    overrides: dict | Callable = field(default_factory=dict)
    keep: tuple = ()
    rename: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)  # stage -> names of the copies that replace it (a curriculum)
    tests: str = ""
    # how the recipe stands against its paper: "faithful", "approximation: <what differs>" or
    # "unverified: <what could not be read>" (README "Methods" shows it; a test keeps it to these forms)
    fidelity: str = "unverified: not yet read against its paper"

    def resolve(self, task_cls) -> dict:
        return self.overrides(task_cls) if callable(self.overrides) else dict(self.overrides)


def _solved(task_cls) -> float:
    return float(task_member(task_cls, "solved_threshold"))


def _dmt(task_cls) -> dict:
    """DMT: the task's specialist split first, then its general split with 1/16 of the specialist rows
    mixed back in, each for half the default SFT stage's steps at its settings."""
    abilities = task_member(task_cls, "abilities")
    if not abilities:
        raise ValueError(f"recipe 'dmt' needs a task with two abilities (row splits: specialist, general); "
                         f"task {task_cls.name!r} defines none (arithmetic does: three_step, two_step)")
    specialist, general = abilities
    sft = task_cls.default_config().stage("sft")
    half = max(1, sft.steps // 2)
    return {"sft.data": specialist, "sft.steps": half, "rl.kind": "sft", "rl.data": general,
            "rl.rows.mix": {specialist: 1 / 16}, "rl.steps": half, "rl.optim.lr": sft.optim.lr, "rl.batch_size": sft.batch_size,
            "rl.optim.schedule": sft.optim.schedule, "rl.optim.warmup": sft.optim.warmup}


def _verifiable(task_cls, recipe: str) -> None:
    """Recipes built on a verifiable answer need rows with an ``answer`` column (``#### N``)."""
    if not {"answer_match", "answer_partial"} & set(task_cls.rewards):
        raise ValueError(f"recipe {recipe!r} scores a verifiable answer (the rows' 'answer' column, as the "
                         f"'answer_match' reward); task {task_cls.name!r} has none (arithmetic has)")


def _tulu3_rlvr(task_cls) -> dict:
    """TULU 3 RLVR (``allenai/open-instruct`` ``ppo_vllm_thread_ray_gtrl.py`` and ``docs/tulu3.md`` at
    af7d8be): PPO, one sample per prompt, reward 10 x the verifier (the reward-model score is off,
    ``reward_model_multiplier 0``), -10 for an output without EOS, KL 0.05 (k1) in the per-token reward,
    GAE gamma 1 lambda 0.95 on whitened advantages, 4 PPO epochs over one minibatch, clip 0.2, value
    loss 0.1 with value clipping 0.2. Samples per step kept at the task's default budget."""
    _verifiable(task_cls, "tulu3_rlvr")
    rl = task_cls.default_config().stages[-1]
    return {"rewards": ["answer_match"], "reward_weights": [], "rl.sampling.group_size": 1,
            "rl.batch_size": rl.batch_size * rl.sampling.group_size, "rl.advantage.estimator": "gae",
            "rl.advantage.gamma": 1.0, "rl.advantage.lam": 0.95, "rl.advantage.normalize": True,
            "rl.advantage.value_coef": 0.1, "rl.advantage.value_clip": 0.2, "rl.advantage.reward_scale": 10.0,
            "rl.filter.truncated_reward": -10.0, "rl.kl.coef": 0.05, "rl.kl.where": "reward",
            "rl.kl.estimator": "k1",
            "rl.pg.epochs": 4, "rl.pg.minibatches": 1, "rl.pg.clip_low": 0.2, "rl.pg.clip_high": 0.2}


def _fast_math(task_cls) -> dict:
    """Fast-Math-R1's GRPO stage (``analokmaus/kaggle-aimo2-fast-math-r1`` ``experiments/train_second_stage.py``):
    rewards format + cosine length + Kimi length, weight 1 each; 8 samples per prompt, KL 0.04 (k3 in
    the loss), one policy iteration per batch, clip 0.2."""
    _verifiable(task_cls, "fast_math")
    return {"rewards": ["answer_given", "cosine_length", "kimi_length"], "reward_weights": [],
            "rl.sampling.group_size": 8, "rl.kl.coef": 0.04, "rl.pg.epochs": 1, "rl.pg.minibatches": 1}


def _curriculum(task_cls) -> dict:
    """UAV-VL-R1's multi-stage GRPO: after SFT, GRPO on the easier split, then on the harder, each
    with half the default RL steps (the task's ``abilities``: specialist = harder, general = easier)."""
    abilities = task_member(task_cls, "abilities")
    if not abilities:
        raise ValueError(f"recipe 'curriculum' needs a task with row splits by difficulty (abilities: harder, "
                         f"easier); task {task_cls.name!r} defines none (arithmetic does: three_step, two_step)")
    harder, easier = abilities
    half = max(1, task_cls.default_config().stages[-1].steps // 2)
    return {"grpo_easy.data": easier, "grpo_easy.steps": half, "grpo_hard.data": harder, "grpo_hard.steps": half}


# The preference losses agree with TRL's on the same inputs; the pairs are the library's choice.
PAIRS = "faithful: the loss (TRL agrees); pairs are best vs worst of 4 own samples by reward, or the rows' own"


def _preference(paper: str, terms: str, loss: str, tests: str, fidelity: str = PAIRS, **extra) -> Recipe:
    """A ``dpo`` stage after SFT: pairs are the best and worst of 4 samples per prompt by reward."""
    overrides = {"rl.kind": "dpo", "rl.preference.loss": loss, "rl.sampling.group_size": 4,
                 **{f"rl.preference.{k}": v for k, v in extra.items()}}
    return Recipe(paper, terms, overrides, rename={"rl": "dpo"}, tests=f"algos/test_preference::{tests}",
    fidelity=fidelity)



RECIPES: dict[str, Recipe] = {
    "sft": Recipe("supervised fine-tuning", "NLL on demonstrations", keep=("sft",), tests="algos/test_sft",
    fidelity="faithful"),
    "grpo": Recipe("DeepSeekMath (2402.03300)", "group advantages (std-scaled), PPO clip, token-mean loss",
                   tests="algos/test_pg::test_agrees_with_trl[grpo/bnpo/dapo], algos/test_advantages",
                   fidelity="faithful: TRL's GRPO loss agrees"),
    "dr_grpo": Recipe("Dr. GRPO (2503.20783)", "group mean-centring without std, constant normaliser",
                      {"rl.advantage.scale_rewards": False, "rl.pg.aggregation": "max_length"},
                      tests="algos/test_pg::test_agrees_with_trl[dr_grpo]",
                      fidelity="faithful: TRL's dr_grpo loss agrees"),
    "dapo": Recipe("DAPO (2503.14476)", "clip-higher 0.2/0.28, dynamic sampling, token-mean, overlong filter + "
                   "soft penalty", lambda t: {"rl.pg.clip_high": 0.28, "rl.filter.dynamic_sampling": True,
                                              "rl.filter.mask_truncated": True, "rl.filter.overlong": _overlong(t)},
                   tests="algos/test_advantages::test_overlong_penalty_by_hand, ::test_dynamic_sampling_drops_all_equal_groups",
                   fidelity="approximation: groups of equal reward are dropped, not re-sampled to refill "
                            "the batch; the overlong window is the task's cap with its last quarter "
                            "penalised (paper: 16384 + 4096 tokens)"),
    "gspo": Recipe("GSPO (2507.18071)", "sequence-level ratio, clip 3e-4/4e-4, 4 minibatches per rollout",
                   {"rl.pg.ratio_level": "sequence", "rl.pg.aggregation": "sequence_mean", "rl.pg.clip_low": 3e-4,
                    "rl.pg.clip_high": 4e-4, "rl.pg.minibatches": 4},
                   tests="algos/test_pg::test_agrees_with_trl[sequence], ::test_gspo_sequence_ratio_by_hand",
                   fidelity="faithful: TRL's sequence-level loss agrees"),
    "rloo": Recipe("RLOO (2402.14740)", "leave-one-out baseline, sequence ratio (TRL RLOOTrainer)",
                   {"rl.advantage.estimator": "rloo", "rl.pg.ratio_level": "sequence_sum"},
                   tests="algos/test_advantages::test_rloo_by_hand, algos/test_pg::test_rloo_loss_agrees_with_trl",
                   fidelity="faithful: TRL's RLOOTrainer loss agrees"),
    "reinforce_pp": Recipe("REINFORCE++ (2501.03262)", "group-mean baseline, advantages whitened over the batch",
                           {"rl.advantage.estimator": "reinforce_pp_baseline"},
                           tests="algos/test_advantages::test_reinforce_pp_whitens_over_the_batch",
                           fidelity="approximation: the -baseline variant's advantages; the paper's k2 KL "
                                    "in the loss is off unless rl.kl.coef is set"),
    "reft": Recipe("ReFT (2401.08967)", "PPO with a value head on the trunk, GAE (gamma 1, lambda 0.95), KL 0.05 in "
                   "the reward, value coef 5, 2 epochs; pair with --rewards answer_partial (ReFT's 0.1 partial credit)",
                   {"rl.advantage.estimator": "gae", "rl.advantage.gamma": 1.0, "rl.advantage.lam": 0.95, "rl.kl.coef": 0.05, "rl.kl.where": "reward",
                    "rl.advantage.value_coef": 5.0, "rl.pg.epochs": 2, "rl.sampling.group_size": 1, "rl.batch_size": 32},
                   rename={"rl": "ppo"}, tests="algos/test_advantages::test_gae_by_hand, test_recipes::test_reft_values, "
                         "stages/test_rl::test_outcome_reward_on_the_last_token_with_kl_in_the_reward",
                         fidelity="approximation: the paper's PPO settings; partial reward only with "
                                  "--rewards answer_partial; warm-up SFT shorter than the paper's 40 "
                                  "epochs"),
    "grpo_kl": Recipe("GRPO with KL (DeepSeekMath; TULU 3 RLVR)", "+ k3 KL to the start model in the loss (0.04)",
                      {"rl.kl.coef": 0.04}, tests="algos/test_pg::test_agrees_with_trl[beta=0.04]",
                      fidelity="faithful: TRL's GRPO with beta 0.04 agrees"),
    "dual_clip": Recipe("dual-clip PPO (1912.09729; verl's default c = 3)", "GRPO whose negative-advantage "
                        "steps are bounded by -3 A", {"rl.pg.dual_clip": 3.0},
                        tests="algos/test_pg::test_dual_clip_bounds_negative_advantages", fidelity='faithful'),
    "acereason": Recipe("AceReason-Nemotron 1.1 (2506.13284)", "temperature steered to hold entropy at 0.3; "
                        "token-mean, no KL", {"rl.sampling.target_entropy": 0.3},
                        tests="algos/test_schedules::test_entropy_temperature_controller_by_hand",
                        fidelity="approximation: only the entropy-steered temperature; the paper's "
                                 "stage-wise length extension and math-then-code curriculum are not "
                                 "reproduced"),
    "entropy_bonus": Recipe("entropy regularisation (verl entropy_coeff)", "GRPO - 0.01 x token entropy",
                            {"rl.pg.entropy_coef": 0.01}, tests="test_recipes",
                            fidelity="faithful: verl's entropy_coeff term"),
    "dft": Recipe("DFT (2508.05629)", "SFT with token weights sg(p)", {"sft.demo_loss.weight": "dft"}, keep=("sft",),
                  tests="algos/test_sft::test_weighted_nll_by_hand_and_its_gradient_is_dft",
                  fidelity="faithful: TRL's dft_loss"),
    "anchored_sft": Recipe("Anchored SFT (2509.23753)", "DFT + 0.1 x KL(start || policy), full vocabulary",
                           {"sft.demo_loss.weight": "dft", "sft.demo_loss.kl_coef": 0.1}, keep=("sft",),
                           tests="algos/test_kl::test_full_forward_kl_matches_torch_kl_div",
                           fidelity="faithful: zhuchichi56/ASFT train_v2.py (DFT + 0.1 x full-vocabulary "
                                    "KL to the start model)"),
    "sstoken": Recipe("ssToken (2510.18250)", "SFT on each demonstration's 60% tokens of highest 0.5 x excess loss "
                      "over the start model (min-max normalised) + 0.5 x last-layer attention on the prompt",
                      {"sft.demo_loss.weight": "sstoken"}, keep=("sft",),
                      tests="algos/test_sft::test_sstoken_keeps_the_top_excess_loss_tokens",
                      fidelity="approximation: the history model is the start-of-stage model; the "
                               "reference code's attention-only warm-up is not reproduced"),
    "poft": Recipe("PoFT (2412.12865)", "Bradley-Terry preference of the policy over aligned models on demos "
                   "(--set sft.demo_loss.poft_reference=DIR[,DIR]; default the start model, with which PoFT begins as a "
                   "rescaled NLL)", {"sft.demo_loss.weight": "poft"}, keep=("sft",),
                   tests="algos/test_sft::test_poft_by_hand, ::test_poft_weights_each_sample_by_how_likely_the_reference_"
                         "finds_it, stages/test_preference::test_poft_reference_models_by_path_change_the_update",
                         fidelity="approximation: the default reference is the start model (then PoFT "
                                  "starts as a rescaled NLL); pass the paper's aligned models with "
                                  "sft.demo_loss.poft_reference"),
    "qtuning": Recipe("Q-Tuning (2509.23873)", "per batch, 25% of samples: confident misconceptions (their 70% "
                      "most salient tokens) and calibration samples, quadrant thresholds bisected to that budget",
                      {"sft.demo_loss.weight": "qtuning"}, keep=("sft",),
                      tests="algos/test_sft::test_qtuning_quadrants_by_hand, ::test_qtuning_bisects_its_thresholds_to_"
                            "the_sample_budget",
                      fidelity="approximation: the project page's procedure and budget; the thresholds' exact form "
                               "inside the bisection and lambda 0.5 are unverified (no code)"),
    "otr": Recipe("One-Token Rollout (2509.26313)", "per demonstrated position, 256 tokens sampled at T 1.2 rewarded 1 "
                  "if the demo token, else -0.1; REINFORCE, no baseline", {"sft.demo_loss.weight": "otr"}, keep=("sft",),
                  tests="algos/test_sft::test_otr_loss_by_hand",
                  fidelity="approximation: objective per the paper's equations as its reviews restate "
                           "them; beta -0.1 and T 1.2 are ours (the paper's values and code were not "
                           "readable)"),
    "ift": Recipe("IFT (2405.11870)", "inputs (1 - 0.2) E(gold) + 0.2 E(predicted); tokens weighted by discounted "
                  "future loss (gamma 0.95)", {"sft.demo_loss.weight": "ift"}, keep=("sft",),
                  tests="algos/test_sft::test_ift_loss_by_hand",
                  fidelity="faithful: the authors' get_cumsum_weight"),
    "fait": Recipe("FAIT (2503.16913)", "after SFT, SFT weighting the gold lines the model's own wrong greedy "
                   "answer changes (1.5) and the tokens that differ in them (2.5)", lambda t: {"rl.kind": "sft", "rl.demo_loss.weight": "fait",
                                                                        "rl.solved_threshold": _solved(t)},
                   rename={"rl": "fait"}, tests="algos/test_sft::test_fait_weights_by_hand, "
                   "adapters/test_token_policy::test_token_lines_follow_the_newlines_of_the_text",
                   fidelity="approximation: line then token differences as the paper's method is summarised, "
                            "against the model's own wrong answer (the paper: a teacher's near-miss variants); "
                            "weights constant (its dynamic rule and values were not readable)"),
    "dmt": Recipe("DMT (How Abilities in LLMs are Affected by SFT Data Composition)", "SFT on the specialist split, then on the general split "
                  "+ 1/16 of the specialist rows", _dmt, rename={"sft": "specialist", "rl": "general"},
                  tests="data_hooks/test_mixing::test_mixed_rows_by_hand",
                  fidelity="approximation: k = 1/16 of the specialist rows mixed back (the paper sweeps 1 "
                           "to 1/256; its chosen k unread); each stage half the SFT steps"),
    "donod": Recipe("DONOD (model-intrinsic dataset pruning)", "SFT on the 30% of rows ranked best by TOPSIS over "
                    "DON = norm(W + dW) - norm(W) (benefit) and NOD = norm(dW) (cost) of the output layer", {"sft.rows.donod": 0.3},
                    keep=("sft",), tests="data_hooks/test_pruning",
                    fidelity="unverified: paper not readable here; the output-layer choice, step size, "
                             "equal TOPSIS weights and the 30% keep share are ours"),
    "middo": Recipe("Middo (2508.21589)", "SFT; 4 times per stage, rows hard before and after training (loss > mean + "
                    "std), isolated (top-2 cosine < mean - std) or of low quality (reward < mean - std) are "
                    "rewritten by the task's rules", lambda t: {"sft.rows.middo": [max(1, t.default_config().stage("sft").steps // 4), 1.0]},
                    keep=("sft",), tests="data_hooks/test_refinement",
                    fidelity="approximation: flagged rows are rewritten by the task's rules, not by an LLM"),
    "uds": Recipe("UDS (gfyddha/UDS)", "SFT on the 1 in 4 rows of highest logit nuclear norm + 2.5e-3 x sketch "
                  "distance to recently selected rows", {"sft.rows.select": "uds"}, keep=("sft",),
                  tests="data_hooks/test_selection",
                  fidelity="faithful: gfyddha/UDS selection (nuclear norm + sketch distance)"),
    "chord": Recipe("CHORD-phi (2508.11408)", "(1 - mu) GRPO + mu SFT, token weights p(1-p), mu = 0.1",
                    {"rl.kind": "mixed", "rl.demo_loss.weight": "chord", "rl.demos.mu": [0.1, 0.1, 0, 0]},
                    rename={"rl": "mixed"}, tests="algos/test_schedules::test_chord_mu_schedule_by_hand",
                    fidelity="faithful: Trinity-RFT's SFTPhiLossFn weights with a constant mu"),
    "chord_mu": Recipe("CHORD-mu (2508.11408)", "(1 - mu) GRPO + mu SFT, mu cosine 0.9 -> 0.05",
                       lambda t: {"rl.kind": "mixed", "rl.demos.mu": [0.9, 0.05, 0, _rl_steps(t)]},
                       rename={"rl": "mixed"}, tests="algos/test_schedules::test_chord_mu_schedule_by_hand",
                       fidelity="approximation: mu follows a cosine from 0.9 to 0.05 over the stage (the "
                                "paper's warm-up and decay lengths are per run)"),
    "luffy": Recipe("LUFFY (2504.14945)", "the demonstration is one of each prompt's 8 group members; its "
                    "tokens' loss -A p/(p + 0.1), unclipped; Dr. GRPO advantages; entropy bonus 0.001",
                    {"rl.demos.in_group": True, "rl.demos.shaping_gamma": 0.1, "rl.advantage.scale_rewards": False,
                     "rl.pg.aggregation": "max_length", "rl.pg.entropy_coef": 0.001},
                    tests="test_recipes::test_demo_joins_its_group, algos/test_pg::test_luffy_policy_shaping_by_hand",
                    fidelity="approximation: ElliottYan/LUFFY's shaping, group (7 + 1) and advantages; "
                             "on-policy tokens keep PPO's clip (LUFFY removes it; inactive with one update"
                             " per batch)"),
    "visurf": Recipe("ViSurf (2510.10606)", "the ground-truth answer joins each prompt's GRPO group (as LUFFY, "
                     "without its shaping)", {"rl.demos.in_group": True}, tests="test_recipes::test_demo_joins_its_group",
                     fidelity="unverified: the paper's three reward-control strategies were not readable; "
                              "this is the ground truth in the group without them"),
    "prefix_rft": Recipe("Prefix-RFT (2507.01679)", "2 of 8 group members continue a demonstration prefix "
                         "(share cosine 0.95 -> 0.05); Dr. GRPO advantages; loss on the 20% highest-entropy prefix "
                         "tokens", {"rl.demos.prefix_samples": 2, "rl.advantage.scale_rewards": False, "rl.pg.aggregation": "max_length"},
                         tests="test_recipes::test_prefix_hybrids",
                         fidelity="approximation: one cosine prefix share for every hybrid (the code draws"
                                  " it uniformly within a scheduled window) and one group baseline for prefix"
                                  " and continuation tokens; the 2-of-8 split is unverified"),
    "relift": Recipe("ReLIFT (Learning What RL Can't)", "GRPO + SFT on a buffer of prompts no sample solved",
                     lambda t: {"rl.demos.relift_size": 8, "rl.solved_threshold": _solved(t)}, tests="test_recipes",
                     fidelity="approximation: TheRoadQaQ/ReLIFT's buffer rule; the demonstrations are the "
                              "rows' own, not the paper's stronger-model solutions"),
    "sasr": Recipe("SASR (2505.13026)", "SFT warm-up, then each step SFT with probability min(1, norm(g_SFT) / its value "
                   "at the hybrid phase's start), else GRPO", {"rl.demos.sasr": True},
                   tests="algos/test_schedules::test_sasr_switching_probability_by_hand",
                   fidelity="unverified: the paper's switching rule (gradient norm and divergence from the"
                            " warm-up model) was not readable; ours uses the SFT gradient norm only"),
    "rft": Recipe("rejection-sampling fine-tuning (FARE)", "sample 8, SFT on the solved ones",
                  lambda t: {"rl.kind": "rft", "rl.solved_threshold": _solved(t)}, rename={"rl": "rft"},
                  tests="stages/test_rft::test_rft_keeps_solved_top_k",
                  fidelity="approximation: one round of rejection sampling per step; FARE iterates over "
                           "whole datasets"),
    "superhf": Recipe("SuperHF", "best of 8 by reward for every prompt (solved or not), SFT + 0.1 x KL to the "
                      "start model", {"rl.kind": "rft", "rl.rejection.top_k": 1, "rl.rejection.require_solved": False,
                                      "rl.kl.coef": 0.1}, rename={"rl": "rft"},
                      tests="stages/test_rft::test_superhf_keeps_the_top_1_of_every_prompt_even_unsolved",
                      fidelity="faithful: top-1 of every prompt by reward, SFT + KL prior to the start "
                               "model"),
    "s3ft": Recipe("S3FT (selective self-to-supervised)", "own answer when judged right, else the gold one",
                   lambda t: {"rl.kind": "rft", "rl.sampling.group_size": 1, "rl.rejection.demo_fallback": True,
                              "rl.solved_threshold": _solved(t)}, rename={"rl": "rft"}, tests="test_recipes",
                              fidelity="approximation: a sample counts as right by the task's reward, not "
                                       "the paper's judge; no paraphrase of the gold answer"),
    "tulu3_rlvr": Recipe("TULU 3 RLVR (2411.15124)", "PPO with a value head, reward 10 x verifier, -10 without "
                         "EOS, KL 0.05 in the reward, GAE (1, 0.95), 4 epochs, value coef 0.1", _tulu3_rlvr,
                         rename={"rl": "ppo"}, tests="test_recipes::test_tulu3_rlvr_rewards_by_hand, "
                         "stages/test_rl::test_outcome_reward_on_the_last_token_with_kl_in_the_reward",
                         fidelity="approximation: open-instruct's PPO settings; the value head shares the "
                                  "policy's trunk (TULU 3: a separate value model started from a reward "
                                  "model); lr and batch are the task's"),
    "fast_math": Recipe("Fast-Math-R1 two-stage recipe (2507.08267)", "SFT, then GRPO on answer given + cosine "
                        "length-scaled correctness + Kimi length penalty, KL 0.04", _fast_math,
                        tests="rewards/test_efficiency, test_recipes::test_recipe_rewards_are_its_papers",
                        fidelity="faithful: the authors' rewards and GRPO settings; lengths in characters "
                                 "as their code, max_len scaled to the task's cap"),
    "curriculum": Recipe("UAV-VL-R1 multi-stage GRPO (2508.11196)", "SFT, then GRPO on the easier split, then on "
                         "the harder", _curriculum, split={"rl": ("grpo_easy", "grpo_hard")},
                         tests="test_recipes::test_curriculum_stages_train_on_their_splits",
                         fidelity="approximation: stages by difficulty (number of operations); UAV-VL-R1's"
                                  " stages are by question type and its per-stage settings were not "
                                  "readable"),
    "rerank_sft": Recipe("SFT or Contrastive Learning? MLLM reranking (2510.14824)", "the model judges (query, "
                         "candidate) by yes / no: pointwise cross-entropy, 1 own + 3 other demonstrations per query",
                         {"sft.kind": "rerank", "sft.rerank.objective": "sft"}, keep=("sft",), rename={"sft": "rerank"},
                         tests="algos/test_rerank, test_recipes::test_rerank_recipes_train_a_reranker",
                         fidelity="unverified: formulas from a transcription of the method section (the authors' "
                                  "code was not available); candidates are the task's own demonstrations"),
    "rerank_contrastive": Recipe("SFT or Contrastive Learning? MLLM reranking (2510.14824)", "InfoNCE on the yes "
                                 "logit over 1 own + 3 other demonstrations per query (the paper's weaker objective)",
                                 {"sft.kind": "rerank", "sft.rerank.objective": "contrastive"}, keep=("sft",),
                                 rename={"sft": "rerank"},
                                 tests="algos/test_rerank, test_recipes::test_rerank_recipes_train_a_reranker",
                                 fidelity="unverified: formulas from a transcription of the method section; the "
                                          "temperature 1 is not confirmed"),
    "dpo": _preference("DPO (2305.18290); pairs as CheXalign (2410.07025)", "sigmoid loss, beta 0.1; best vs worst "
                       "of 4 samples by reward", "dpo", "test_dpo_family_agrees_with_trl[sigmoid]"),
    "cdpo": _preference("cDPO (conservative DPO)", "DPO with label smoothing 0.1", "dpo",
                        "test_dpo_and_cdpo_by_hand", label_smoothing=0.1),
    "robust_dpo": _preference("robust DPO (2403.00409)", "unbiased under 10% flipped labels", "robust",
                              "test_dpo_family_agrees_with_trl[robust]", label_smoothing=0.1),
    "ipo": _preference("IPO (2310.12036)", "squared length-averaged margin to 1/(2 beta)", "ipo",
                       "test_dpo_family_agrees_with_trl[ipo]"),
    "rdpo": _preference("R-DPO (2403.19159), CheXalign's length control", "DPO + 0.05 x length difference", "rdpo",
                        "test_rdpo_adds_the_length_term",
                        fidelity="faithful: CheXalign's rdpo_trainer.py length term (TRL has no R-DPO); pairs as DPO's"),
    "tulu3_dpo": _preference("TULU 3 length-normalised DPO (2411.15124)", "DPO on length-averaged log-ratios, beta 5",
                             "dpo_norm", "test_dpo_family_agrees_with_trl[sigmoid_norm]", beta=5.0),
    "simpo": _preference("SimPO (2405.14734)", "reference-free, length-averaged, beta 2.5, gamma 1.375", "simpo",
                         "test_simpo_and_orpo_agree_with_trl", beta=2.5),
    "orpo": _preference("ORPO (2403.07691)", "NLL of chosen + 0.1 x odds-ratio term, reference-free", "orpo",
                        "test_simpo_and_orpo_agree_with_trl"),
    "kto": _preference("KTO (2402.01306)", "unpaired: chosen desirable, rejected undesirable; z0 from mismatched pairs",
                       "kto", "test_kto_agrees_with_trl"),
    "asft": _preference("ASFT (2409.10571)", "absolute likelihood of each answer, reference-free, + NLL of chosen",
                        "asft", "test_robust_dpo_and_asft_by_hand",
                        fidelity="unverified: only the abstract was readable; the absolute-likelihood term"
                                 " uses mean log-probs (a later survey classes ASFT as odds-based)"),
    "spin": Recipe("SPIN (2401.01335)", "demonstration vs the previous iterate's sample, reference refreshed per "
                   "iteration (3 iterations)", lambda t: {"rl.kind": "spin", "rl.preference.iteration_steps": max(1, _rl_steps(t) // 3)},
                   rename={"rl": "spin"},
                   tests="test_recipes::test_spin_refreshes_its_reference",
                   fidelity="approximation: 3 iterations within one stage, each on fresh samples of the "
                            "previous iterate; the paper runs whole epochs per iteration"),
}


def _rl_steps(task_cls) -> int:
    return task_cls.default_config().stages[-1].steps


def _overlong(task_cls) -> list[int]:
    """DAPO's penalty window scaled to the task's generation cap: the last quarter is penalised."""
    cap = task_cls.default_config().stages[-1].sampling.max_new_tokens
    return [cap, max(1, cap // 4)]


def apply_recipe(cfg, recipe: Recipe, task_cls) -> None:
    """Edit ``cfg`` (a task's default config) in place into ``recipe``."""
    from mmpost.config import apply_overrides

    if recipe.keep:
        cfg.stages = [s for s in cfg.stages if s.name in recipe.keep]
    for name, copies in recipe.split.items():
        at = [s.name for s in cfg.stages].index(name)
        cfg.stages[at:at + 1] = [dataclasses.replace(copy.deepcopy(cfg.stages[at]), name=new) for new in copies]
    overrides = recipe.resolve(task_cls)
    apply_overrides(cfg, overrides)
    for old, new in recipe.rename.items():
        cfg.stage(old).name = new
