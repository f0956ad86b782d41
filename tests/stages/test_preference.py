"""The preference stage's terms on a real token policy, against TRL where TRL has them."""

import copy
from types import SimpleNamespace

import pytest
import torch

import mmpost
from mmpost.algos import preference as losses
from mmpost.stages.preference import Preference, _mismatched, _sums, preference_loss
from mmpost.stages.spec import Stage
from mmpost.types import Rollout
from tests.algos.test_preference import trl_kto_loss


@pytest.fixture(scope="module")
def policy_and_reference(mmpost_home):
    from mmpost.tasks.arithmetic import Arithmetic

    task = Arithmetic(Arithmetic.default_config())
    policy = task.policy()
    reference = copy.deepcopy(policy)
    torch.manual_seed(0)
    with torch.no_grad():  # a reference that differs from the policy, so every log-ratio is non-zero
        for parameter in reference.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    rows = task.rows("heldout")[:3]
    rows = [{**r, "chosen": r["completion"], "rejected": rows[(i + 1) % 3]["completion"]} for i, r in enumerate(rows)]
    return policy, reference, rows


def stage_loss(stage, policy, reference, rows):
    """The preference stage's loss on the rows' (chosen, rejected) columns, the chosen rollout, and the
    concatenated pair as the stage scores it (answer likelihoods at temperature 1)."""
    ctx = SimpleNamespace(stage=stage, policy=policy, reference=reference)
    chosen, rejected = policy.demo_rollout(rows, "chosen"), policy.demo_rollout(rows, "rejected")
    with torch.no_grad():
        loss, _ = preference_loss(ctx, chosen, rejected)
    pair = Rollout.concat([chosen, rejected])
    pair.temperature = 1.0
    return loss, chosen, pair


def test_kto_reference_point_is_over_every_answer_of_the_batch_as_trl(policy_and_reference):
    """KTO's z0 is the mean log-ratio of all answers of the batch under mismatched prompts (chosen and
    rejected alike), as the module's docstring and TRL's KTOTrainer say: the stage's loss equals
    TRL's ``_compute_loss`` on the same answers to 1e-6."""
    pytest.importorskip("trl")
    policy, reference, rows = policy_and_reference
    beta = 0.2
    stage = Stage(name="dpo", kind="dpo", preference=Preference(loss="kto", beta=beta))
    ours, chosen, pair = stage_loss(stage, policy, reference, rows)
    with torch.no_grad():
        logp, ref = _sums(policy, pair)[0], _sums(reference, pair)[0]
        mismatched = _mismatched(pair)
        kl_logp, kl_ref = _sums(policy, mismatched)[0], _sums(reference, mismatched)[0]
    label = torch.tensor([True] * len(rows) + [False] * len(rows))
    completion_mask = torch.tensor([[0, 1]] * len(label))  # one "token" per answer carrying its summed log-prob
    expected = trl_kto_loss(logp[:, None], completion_mask, label, ref, kl_logp, kl_ref, beta)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)
    # (the chosen answers alone give another reference point, hence another loss)
    z_all = (kl_logp - kl_ref).mean().clamp(min=0)
    z_chosen = (_sums(policy, _mismatched(chosen))[0] - _sums(reference, _mismatched(chosen))[0]).mean().clamp(min=0)
    assert float(z_all.detach()) != pytest.approx(float(z_chosen.detach()), abs=1e-4)


def test_poft_reference_models_by_path_change_the_update(policy_and_reference, tmp_path):
    """``demo_loss.poft_reference=[DIR]``: the aligned model saved there is PoFT's reference (loaded once,
    frozen; no start-of-stage copy is made), and the loss is the one its scores give, not the
    start model's."""
    from mmpost.algos.sft import mean_loglik, poft_loss
    from mmpost.stages.sft import DemoLoss, demo_loss

    policy, reference, rows = policy_and_reference
    reference.save(tmp_path / "aligned")
    stage = Stage(name="sft", kind="sft", demo_loss=DemoLoss(weight="poft", poft_reference=[str(tmp_path / "aligned")]))
    assert not stage.needs_reference()
    ctx = SimpleNamespace(stage=stage, policy=policy, reference=None, models={})
    loss, _ = demo_loss(ctx, rows)
    assert list(ctx.models) == [str(tmp_path / "aligned")]
    logprobs, mask = policy.demo_logprobs(rows)
    with torch.no_grad():
        expected = poft_loss(logprobs, None, mask, mean_loglik(*reference.demo_logprobs(rows)))
        start_model = poft_loss(logprobs, logprobs.detach(), mask)  # the default reference at the stage's start
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert abs(loss.item() - start_model.item()) > 1e-3
    demo_loss(ctx, rows)
    assert len(ctx.models) == 1  # loaded once per stage


PREFERENCE_RECIPES = {  # recipe -> its loss from the algos functions, on (w, l) sums, reference sums and lengths
    "dpo": lambda w, l, rw, rl, nw, nl: losses.dpo(w, l, rw, rl, 0.1),
    "cdpo": lambda w, l, rw, rl, nw, nl: losses.dpo(w, l, rw, rl, 0.1, 0.1),
    "robust_dpo": lambda w, l, rw, rl, nw, nl: losses.robust_dpo(w, l, rw, rl, 0.1, 0.1),
    "ipo": lambda w, l, rw, rl, nw, nl: losses.ipo(w, l, rw, rl, nw, nl, 0.1),
    "rdpo": lambda w, l, rw, rl, nw, nl: losses.rdpo(w, l, rw, rl, nw, nl, 0.1, 0.05),
    "tulu3_dpo": lambda w, l, rw, rl, nw, nl: losses.dpo_length_normalized(w, l, rw, rl, nw, nl, 5.0),
    "simpo": lambda w, l, rw, rl, nw, nl: losses.simpo(w, l, nw, nl, 2.5, 1.375),
    "orpo": lambda w, l, rw, rl, nw, nl: -w / nw + 0.1 * losses.orpo_odds_ratio(w / nw, l / nl),
    "asft": lambda w, l, rw, rl, nw, nl: -w / nw + losses.asft(w / nw, l / nl),
}


@pytest.mark.parametrize("name", sorted(PREFERENCE_RECIPES))
def test_preference_recipe_computes_its_own_loss(name, policy_and_reference):
    """Each preference recipe's stage computes its paper's loss (with the recipe's beta, smoothing,
    margins) on the same pairs, and no two recipes the same one."""
    policy, reference, rows = policy_and_reference
    stage = mmpost.build_config("arithmetic", recipe=name).stage("dpo")
    ours, _, pair = stage_loss(stage, policy, reference, rows)
    with torch.no_grad():
        (logp, length), ref = _sums(policy, pair), _sums(reference, pair)[0]
    n = len(rows)
    expected = PREFERENCE_RECIPES[name](logp[:n], logp[n:], ref[:n], ref[n:], length[:n], length[n:]).mean()
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)
    others = {other: f(logp[:n], logp[n:], ref[:n], ref[n:], length[:n], length[n:]).mean().item()
              for other, f in PREFERENCE_RECIPES.items() if other != name}
    assert all(abs(value - ours.item()) > 1e-6 for value in others.values()), others
