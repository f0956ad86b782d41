"""Every named recipe runs a few steps on the arithmetic task and ends with finite losses.

The policy is a tiny model after a short SFT (a module fixture), scored with ReFT's partial reward
plus a small length term, so samples differ in reward and every term (pairs, solved samples,
groups with spread) is exercised.
"""

import ast
import json
import math
import re
from pathlib import Path

import pytest
import torch

import mmpost
from mmpost.algos.sft import ift_loss, poft_loss, weighted_nll
from mmpost.recipes import RECIPES

QUICK = {"data.train_size": 64, "data.eval_size": 4, "threads": 1, "eval.sampled": False}


@pytest.fixture(scope="module")
def warm_model(mmpost_home, tmp_path_factory):
    """The arithmetic model after 150 SFT steps: answers formatted, often wrong."""
    from mmpost.engine import train

    out = tmp_path_factory.mktemp("warm")
    cfg = mmpost.build_config("arithmetic", recipe="sft", output_dir=str(out),
                              overrides={**QUICK, "data.train_size": 2000, "sft.steps": 150})
    train(cfg)
    return str(out / "final")


def _quick(cfg, steps=3):
    for stage in cfg.stages:
        stage.steps = 2 if stage.kind == "sft" else steps
        stage.batch_size = 4 if stage.kind == "sft" else 2
        stage.sampling.max_new_tokens = 40
        stage.optim.lr = min(stage.optim.lr, 1e-4)  # a few steps on tiny batches must not wreck the warm model
        stage.pg.minibatches = min(stage.pg.minibatches, 2)
        if stage.kind in ("rl", "mixed", "rft", "dpo"):
            stage.sampling.group_size = 4
        stage.demos.relift_size = min(stage.demos.relift_size, 2)
        stage.solved_threshold = min(stage.solved_threshold, 0.1)  # partial credit counts: something is kept
    return cfg


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# What shows, in a short run's metrics, that a recipe's own term ran (the formula of each is checked by
# the tests its row names): a metric only that term logs, or a predicate on the run's lines.
SIGNATURE = {
    "reft": "loss/value", "tulu3_rlvr": "loss/value", "anchored_sft": "kl/demo", "sstoken": "sft/kept_tokens",
    "qtuning": "sft/kept_tokens", "otr": "otr/hit_rate", "fait": "fait/upweighted", "uds": "select/pool",
    "chord": "mu", "chord_mu": "mu", "luffy": "demos/in_group", "visurf": "demos/in_group",
    "prefix_rft": "prefix/ratio", "relift": "relift/buffer", "sasr": "sasr/sft_probability",
    "rft": "rft/kept_fraction", "superhf": "rft/kept_fraction", "s3ft": "rft/demo_fallback",
    "entropy_bonus": "entropy/full", "grpo_kl": "kl",  # (fast_math's rewards: test_recipe_rewards_are_its_papers)
    "acereason": lambda lines: len({line["temperature"] for line in lines if "temperature" in line}) > 1,
    "donod": lambda lines: True,  # checked on the run directory below
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_runs_with_finite_losses(name, warm_model, tmp_path):
    from mmpost.engine import train

    # the length term spreads rewards within a group, so pairs and solved samples exist at every step
    cfg = _quick(mmpost.build_config("arithmetic", recipe=name, model=warm_model, rewards=["answer_partial", "length"],
                                     weights=[1.0, 0.1], output_dir=str(tmp_path), overrides=QUICK))
    train(cfg)
    lines = _lines(tmp_path)
    assert {line["stage"] for line in lines} == {s.name for s in cfg.stages}
    losses = [v for line in lines for k, v in line.items() if k.startswith("loss/")]
    assert losses and all(math.isfinite(v) for v in losses), lines[-1]
    last = [line for line in lines if line["stage"] == cfg.stages[-1].name]
    assert any(k.startswith("loss/") for line in last for k in line), f"{name}: the last stage never trained"
    sign = SIGNATURE.get(name)
    if isinstance(sign, str):
        assert any(sign in line for line in last), f"{name}: its term never logged {sign!r}"
    elif sign:
        assert sign(last), f"{name}: its term left no trace in {last}"
    if name == "donod":
        assert (tmp_path / "donod-sft.json").exists()


@pytest.mark.parametrize("name", ["luffy", "visurf"])
def test_demo_joins_its_group(name, warm_model, mmpost_home):
    """LUFFY / ViSurf: the gold answer is the last of its prompt's ``group_size`` members (LUFFY's 7 + 1),
    marked off-policy, and it is right; its stored log-probs are the model's (first ratio 1)."""
    from types import SimpleNamespace

    from mmpost.adapters.token_policy import TokenPolicy
    from mmpost.rewarding import score_rollout
    from mmpost.rewards.answer import answer_match
    from mmpost.stages.rl import _sample_groups

    rows = mmpost.TASKS.get("arithmetic")(mmpost.build_config("arithmetic")).rows("train")[:2]
    stage = mmpost.build_config("arithmetic", recipe=name, overrides={"rl.sampling.group_size": 4}).stages[-1]
    policy = TokenPolicy.from_pretrained(warm_model, max_new_tokens=40)
    merged = _sample_groups(SimpleNamespace(stage=stage, policy=policy, step=0, steps=1), rows, 1.0)
    assert merged.group.tolist() == [0, 0, 0, 1, 1, 1, 0, 1]
    assert merged.off_policy.tolist() == [False] * 6 + [True] * 2
    score_rollout(merged, {"answer_match": answer_match}, {"answer_match": 1.0})
    assert merged.rewards[-2:].tolist() == [1.0, 1.0]
    recomputed = policy.logprobs(merged)
    assert torch.allclose(recomputed.detach(), merged.logprobs, atol=1e-4)
    assert stage.demos.shaping_gamma == (0.1 if name == "luffy" else 0.0)


def test_spin_refreshes_its_reference(warm_model, tmp_path):
    """Every iteration_steps the reference (the iterate that plays the rejected side) becomes the policy."""
    from mmpost.engine import train

    cfg = _quick(mmpost.build_config("arithmetic", recipe="spin", model=warm_model, output_dir=str(tmp_path),
                                     overrides={**QUICK, "spin.preference.iteration_steps": 2}), steps=4)
    cfg.stages = [s for s in cfg.stages if s.kind == "spin"]
    train(cfg)
    kl = json.loads((tmp_path / "results.json").read_text())
    assert "kl_to_start" not in kl  # a moving reference has no fixed start to compare with
    margins = [line["rewards/margin"] for line in _lines(tmp_path)]
    assert len(margins) == 4 and margins[0] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert margins[2] == pytest.approx(0.0, abs=1e-6)  # and again right after the refresh at step 3
    assert margins[1] != pytest.approx(0.0, abs=1e-6)


def test_token_only_recipes_are_refused_before_building(mmpost_home):
    with pytest.raises(ValueError, match="needs a token policy"):
        mmpost.build_config("reach", recipe="rft")
    with pytest.raises(ValueError, match="Did you mean 'dpo'"):
        mmpost.build_config("arithmetic", recipe="dpoo")


def test_reft_values(warm_model, tmp_path):
    """ReFT's PPO: a value head on the trunk is trained (critic loss logged) and saved with the model."""
    from safetensors.torch import load_file

    from mmpost.engine import train

    cfg = _quick(mmpost.build_config("arithmetic", recipe="reft", model=warm_model, rewards=["answer_partial"],
                                     output_dir=str(tmp_path), overrides=QUICK), steps=4)
    cfg.stages = [s for s in cfg.stages if s.name == "ppo"]
    cfg.stages[0].batch_size, cfg.stages[0].optim.lr = 4, 1e-3
    train(cfg)
    lines = _lines(tmp_path)
    assert all("loss/value" in line and "value/mean" in line for line in lines)
    assert lines[0]["value/mean"] == 0.0 and lines[-1]["value/mean"] != 0.0  # zero-initialised, then learned
    assert "value_head.weight" in load_file(tmp_path / "final" / "model.safetensors")


def test_prefix_hybrids(warm_model, mmpost_home):
    """Prefix-RFT: hybrids start with the demonstration's first tokens; only the highest-entropy share
    of all the call's prefix tokens keeps a loss; stored log-probs are the model's own."""
    from mmpost.adapters.token_policy import TokenPolicy
    from mmpost.config import TrainConfig
    from mmpost.tasks.arithmetic import Arithmetic

    rows = Arithmetic(TrainConfig(task="arithmetic")).rows("train")[:2]
    policy = TokenPolicy.from_pretrained(warm_model, max_new_tokens=40)
    hybrid = policy.prefixed_rollout(rows, 2, 0.5, entropy_top=0.25)
    demo, demo_mask = policy.demo_tokens(rows, "completion")
    kept, prefix_tokens = 0, 0
    for i in range(4):
        demo_ids = demo[i // 2][demo_mask[i // 2].bool()]
        k = int(0.5 * len(demo_ids))
        assert torch.equal(hybrid.actions.completion_ids[i, :k], demo_ids[:k])
        kept, prefix_tokens = kept + int(hybrid.mask[i, :k].sum()), prefix_tokens + k
        assert hybrid.mask[i, k] == 1.0  # the sampled continuation keeps its loss
    assert kept == max(1, round(0.25 * prefix_tokens))  # the entropy-clipped prefixes, ranked together
    assert torch.allclose(policy.logprobs(hybrid).detach(), hybrid.logprobs, atol=1e-4)
    assert hybrid.group.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("name", ["relift", "dpo", "sasr"])
def test_resume_is_exact_with_stage_state(name, warm_model, tmp_path):
    """Stage state (ReLIFT's buffer, the entropy controller's temperature, the preference stage's
    sampling) survives a lost checkpoint: the resumed run ends with the same weights."""
    import shutil

    from safetensors.torch import load_file

    from mmpost.engine import train

    def config(out):
        cfg = _quick(mmpost.build_config("arithmetic", recipe=name, model=warm_model,
                                         rewards=["answer_partial", "length"], weights=[1.0, 0.1],
                                         output_dir=str(out), overrides={**QUICK, "checkpoint_every": 2}), steps=4)
        cfg.stages = cfg.stages[1:]  # the post-SFT stage only
        cfg.stages[0].sampling.target_entropy = 0.3 if name == "relift" else 0.0
        return cfg

    train(config(tmp_path / "full"))
    train(config(tmp_path / "crashed"))
    checkpoints = sorted((tmp_path / "crashed" / "checkpoints").iterdir())
    shutil.rmtree(checkpoints[-1])  # the last checkpoint was being written when the machine died
    shutil.rmtree(tmp_path / "crashed" / "final")
    mmpost.train(resume=str(tmp_path / "crashed"))
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = _lines(tmp_path / "full")
    if name == "relift":
        assert any(line["temperature"] != 1.0 for line in lines) and "relift/buffer" in lines[-1]


def test_recipes_name_tests_that_exist():
    """Each recipe's ``tests`` (shown by ``mmpost list recipes`` and README "Methods") names files under
    tests/ ("algos/test_pg" = tests/algos/test_pg.py) and test functions defined in them: "FILE",
    "FILE::TEST[case]" (the parameter case is a description), or "::TEST" in the file named before it."""
    here = Path(__file__).parent
    wrong = []
    for name, recipe in RECIPES.items():
        current = None
        for entry in recipe.tests.split(","):
            entry = re.sub(r"\s*\(.*\)$", "", entry.strip())  # a note in parentheses
            path, _, test = entry.partition("::")
            current = path or current
            file = here / f"{current}.py"
            if not entry or not current or not file.is_file():
                wrong.append(f"{name}: {entry!r} names no test file under tests/")
            elif test:
                defined = {n.name for n in ast.parse(file.read_text()).body if isinstance(n, ast.FunctionDef)}
                if test.split("[")[0] not in defined:
                    wrong.append(f"{name}: {test.split('[')[0]} is not defined in tests/{current}.py")
    assert not wrong, "\n".join(wrong)


def test_every_recipe_states_its_fidelity():
    """The "fidelity" column (README "Methods", `mmpost list recipes`) is each recipe's ``fidelity`` field,
    one of: faithful / approximation: what differs / unverified: what could not be read."""
    wrong = {name: r.fidelity for name, r in RECIPES.items()
             if not re.fullmatch(r"faithful(: .+)?|approximation: .{10,}|unverified: .{10,}", r.fidelity)}
    assert not wrong, wrong


def test_readme_methods_table_is_the_generated_one():
    """README's "Methods" table is `mmpost list recipes --markdown`, so it cannot drift from recipes.py."""
    import contextlib
    import io
    from pathlib import Path

    from mmpost.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["list", "recipes", "--markdown"])
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert out.getvalue().strip() in readme


SFT_FAMILY = {  # recipe -> the term its SFT stage must compute (the algos function), on the same batch
    "dft": lambda policy, logprobs, mask, rows: weighted_nll(logprobs, mask, "dft"),
    "poft": lambda policy, logprobs, mask, rows: poft_loss(logprobs, logprobs.detach(), mask),  # start model = policy
    "ift": lambda policy, logprobs, mask, rows: ift_loss(*policy.ift_demo_logprobs(rows, 0.2), 0.95),
}


@pytest.mark.parametrize("name", sorted(SFT_FAMILY) + ["anchored_sft", "sstoken", "qtuning", "otr"])
def test_sft_family_recipe_computes_its_own_term(name, warm_model):
    """On the same batch of demonstrations, a recipe's SFT stage computes its own term (the algos
    function its formula names, where it can be recomputed here) and not plain SFT's NLL."""
    import copy
    from types import SimpleNamespace

    from mmpost.adapters.token_policy import TokenPolicy
    from mmpost.stages.sft import demo_loss

    policy = TokenPolicy.from_pretrained(warm_model)
    rows = mmpost.TASKS.get("arithmetic")(mmpost.build_config("arithmetic")).rows("heldout")[:4]
    stage = mmpost.build_config("arithmetic", recipe=name).stage("sft")
    base = mmpost.build_config("arithmetic", recipe="sft").stage("sft")
    reference = copy.deepcopy(policy) if stage.needs_reference() else None
    torch.manual_seed(0)
    ours, _ = demo_loss(SimpleNamespace(stage=stage, policy=policy, reference=reference, models={}), rows)
    plain, _ = demo_loss(SimpleNamespace(stage=base, policy=policy, reference=None, models={}), rows)
    assert abs(ours.item() - plain.item()) > 1e-4, f"{name} computed plain SFT"
    if name in SFT_FAMILY:
        logprobs, mask = policy.demo_logprobs(rows)
        torch.manual_seed(0)
        assert ours.item() == pytest.approx(SFT_FAMILY[name](policy, logprobs, mask, rows).item(), abs=1e-5)


RL_FAMILY = ["dr_grpo", "gspo", "rloo", "reinforce_pp", "dual_clip", "grpo_kl", "entropy_bonus", "dapo"]


@pytest.mark.parametrize("name", RL_FAMILY)
def test_rl_family_recipe_computes_its_own_term(name, warm_model):
    """On the same sampled, scored group, a recipe's RL objective (advantages, then the loss with the
    KL / entropy terms) is the formula its knobs name, and differs from GRPO's."""
    import copy
    from types import SimpleNamespace

    from mmpost.adapters.token_policy import TokenPolicy
    from mmpost.algos.kl import per_step_kl
    from mmpost.algos.pg import aggregate, clipped_pg_loss
    from mmpost.stages.rl import compute_advantages, pg_objective

    policy = TokenPolicy.from_pretrained(warm_model, max_new_tokens=24)
    rows = mmpost.TASKS.get("arithmetic")(mmpost.build_config("arithmetic")).rows("heldout")[:2]
    torch.manual_seed(0)
    sampled = policy.rollout(rows, 4)
    sampled.rewards = torch.tensor([0.0, 0.5, 1.0, 0.25, 1.0, 0.0, 0.75, 0.5])
    sampled.ref_logprobs = sampled.logprobs - 0.05 * sampled.mask  # a start model a little off the sampler
    sampled.logprobs = sampled.logprobs - 1.5 * sampled.mask  # an older sampler: ratios e^1.5, so the clips act

    def objective(recipe: str):
        stage = mmpost.build_config("arithmetic", recipe=recipe).stages[-1]
        rollout = copy.deepcopy(sampled)
        compute_advantages(rollout, stage)
        ctx = SimpleNamespace(stage=stage, policy=policy, reference=policy if stage.kl.coef else None)
        loss, _ = pg_objective(ctx, rollout, closed_form=False)
        return stage, rollout, loss

    stage, rollout, ours = objective(name)
    _, base_rollout, grpo = objective("grpo")
    assert abs(ours.item() - grpo.item()) > 1e-6 or not torch.allclose(rollout.advantages, base_rollout.advantages), name
    logprobs, entropy = policy.logprobs(rollout, return_entropy=True)
    mask = rollout.mask
    expected, _ = clipped_pg_loss(logprobs, rollout.logprobs, rollout.advantages, mask, stage.pg.clip_low,
                                  stage.pg.clip_high, stage.pg.aggregation, stage.pg.dual_clip, stage.pg.ratio_level,
                                  stage.sampling.max_new_tokens)
    if stage.kl.coef:
        kl = per_step_kl(logprobs, rollout.ref_logprobs, stage.kl.estimator)
        expected = expected + stage.kl.coef * aggregate(kl, mask, stage.pg.aggregation, stage.sampling.max_new_tokens)
    if stage.pg.entropy_coef:
        expected = expected - stage.pg.entropy_coef * aggregate(entropy, mask, "token_mean")
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)


def test_tulu3_rlvr_rewards_by_hand():
    """TULU 3 RLVR: the verifier's 0/1 becomes 0/10, an output cut before its EOS gets -10 whatever it
    scored, and the PPO stage samples once per prompt with the KL in the per-token reward."""
    from types import SimpleNamespace

    from mmpost.stages.rl import shape_rewards

    cfg = mmpost.build_config("arithmetic", recipe="tulu3_rlvr")
    stage = cfg.stage("ppo")
    assert cfg.rewards == ["answer_match"] and stage.sampling.group_size == 1 and stage.kl.where == "reward"
    rollout = SimpleNamespace(rewards=torch.tensor([1.0, 0.0, 1.0]), truncated=torch.tensor([False, False, True]),
                              num_steps=torch.tensor([5.0, 5.0, 40.0]), metrics={})
    shape_rewards(rollout, stage)
    assert rollout.rewards.tolist() == [10.0, 0.0, -10.0]


@pytest.mark.parametrize("name", ["fast_math", "tulu3_rlvr"])
def test_recipe_rewards_are_its_papers(name):
    """The recipe scores with its paper's rewards: on hand-written completions, the run's total reward is
    the sum the paper's reward code gives (Fast-Math-R1: answer given + cosine length + Kimi length)."""
    from mmpost.rewards.efficiency import CosineLength, kimi_length
    from mmpost.rewarding import score_rollout
    from mmpost.types import Rollout

    cfg = mmpost.build_config("arithmetic", recipe=name)
    rewards = {r: mmpost.REWARDS.get(r) for r in cfg.rewards}
    for fn in rewards.values():
        if hasattr(fn, "configure"):
            fn.configure(cfg)
    completions = ["2+3=5\n#### 5", "2+3=6\n#### 6", "it is five"]
    rollout = Rollout(logprobs=torch.zeros(3, 1), mask=torch.ones(3, 1), group=torch.zeros(3, dtype=torch.long),
                      outputs=completions, prompts=["q"] * 3, columns={"answer": ["5"] * 3}, actions=None)
    score_rollout(rollout, rewards, {r: 1.0 for r in rewards})
    if name == "fast_math":
        cosine = CosineLength(max_len=round(CosineLength.CHARS_PER_CAP_TOKEN * cfg.stages[-1].sampling.max_new_tokens))
        expected = [g + c + k for g, c, k in zip([1.0, 1.0, 0.0], cosine(["q"] * 3, completions, answer=["5"] * 3),
                                                 kimi_length(["q"] * 3, completions, answer=["5"] * 3))]
        assert cfg.stages[-1].kl.coef == 0.04 and cfg.stages[-1].sampling.group_size == 8
    else:
        expected = [1.0, 0.0, 0.0]
    assert rollout.rewards.tolist() == pytest.approx(expected)


def test_curriculum_stages_train_on_their_splits(warm_model, tmp_path):
    """UAV-VL-R1's multi-stage GRPO: after SFT, a GRPO stage on the easier split, then one on the harder
    (arithmetic: two then three operations), each half the default RL steps."""
    from mmpost.engine import train

    cfg = mmpost.build_config("arithmetic", recipe="curriculum")
    default_rl = mmpost.build_config("arithmetic").stages[-1]
    assert [(s.name, s.kind, s.data) for s in cfg.stages] == [
        ("sft", "sft", "train"), ("grpo_easy", "rl", "two_step"), ("grpo_hard", "rl", "three_step")]
    assert cfg.stage("grpo_easy").steps + cfg.stage("grpo_hard").steps == default_rl.steps
    task = mmpost.TASKS.get("arithmetic")(cfg)
    assert {r["operations"] for r in task.rows("two_step")} == {2}
    assert {r["operations"] for r in task.rows("three_step")} == {3}
    cfg = _quick(mmpost.build_config("arithmetic", recipe="curriculum", model=warm_model, output_dir=str(tmp_path),
                                     overrides={**QUICK, "sft.steps": 0}), steps=2)
    train(cfg)
    trained = {line["stage"] for line in _lines(tmp_path) if "loss/total" in line}
    assert trained == {"grpo_easy", "grpo_hard"}


def test_chord_loss_is_the_mix_of_grpo_and_sft(warm_model, tmp_path):
    """CHORD: each update's loss is (1 - mu) x the GRPO objective + mu x the SFT term on the prompts'
    demonstrations, as logged by the mixed stage at every step."""
    from mmpost.engine import train

    cfg = _quick(mmpost.build_config("arithmetic", recipe="chord", model=warm_model, rewards=["answer_partial", "length"],
                                     weights=[1.0, 0.1], output_dir=str(tmp_path), overrides={**QUICK, "sft.steps": 0}))
    for stage in cfg.stages:
        stage.pg.minibatches = stage.pg.epochs = 1  # one update per step: the logged parts are its loss's
    train(cfg)
    lines = [line for line in _lines(tmp_path) if line.get("stage") == "mixed" and "loss/total" in line]
    assert lines
    for line in lines:
        mu = line["mu"]
        assert mu == pytest.approx(0.1)
        assert line["loss/total"] == pytest.approx((1 - mu) * line["loss/pg"] + mu * line["loss/sft"], abs=1e-6)


@pytest.mark.parametrize("name", ["rerank_sft", "rerank_contrastive"])
def test_rerank_recipes_train_a_reranker(name, mmpost_home, tmp_path):
    """The reranking recipes train the policy to judge its task's (query, candidate) pairs: the held-out
    evaluation adds MRR and recall@1 over 1 + 3 candidates, and the pointwise SFT objective (the
    paper's better one) raises MRR within 150 steps from the untrained model (0.527 -> 0.650 here)."""
    from mmpost.engine import train

    cfg = mmpost.build_config("arithmetic", recipe=name, output_dir=str(tmp_path),
                              overrides={**QUICK, "data.train_size": 2000, "data.eval_size": 40, "rerank.batch_size": 8,
                                         "rerank.steps": 150 if name == "rerank_sft" else 10})
    assert [(s.name, s.kind) for s in cfg.stages] == [("rerank", "rerank")]
    results = train(cfg)
    before, after = results["before"]["greedy"], results["after"]["greedy"]
    assert 0 < before["rerank/mrr"] <= 1 and 0 <= after["rerank/recall@1"] <= 1
    assert any("loss/rerank" in line for line in _lines(tmp_path))
    if name == "rerank_sft":
        assert after["rerank/mrr"] > before["rerank/mrr"] + 0.05, (before, after)
