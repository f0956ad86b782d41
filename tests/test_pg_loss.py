"""The clipped policy-gradient loss: by hand, and against TRL's GRPOTrainer loss on the same inputs."""

import math
from types import SimpleNamespace

import pytest
import torch

from mmpost.algos.kl import kl_k3, sequence_kl
from mmpost.algos.pg import aggregate, clipped_pg_loss


def test_clipped_loss_by_hand():
    # one output, three steps, advantage +1; ratios e^0=1, e^0.5=1.6487 (clipped to 1.2), e^-0.5=0.6065
    logprobs = torch.tensor([[0.0, 0.5, -0.5]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 3)
    loss, metrics = clipped_pg_loss(logprobs, old, adv, mask, 0.2, 0.2)
    # per step: -min(r*A, clip(r)*A) = -1, -1.2, -0.6065 ; token mean
    expected = -(1.0 + 1.2 + math.exp(-0.5)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(1 / 3)  # only the 1.6487 step, whose A > 0


def test_negative_advantage_and_masking():
    logprobs = torch.tensor([[0.5, -0.5, 9.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # third step is padding, ignored
    loss, _ = clipped_pg_loss(logprobs, old, torch.tensor([-2.0]), mask, 0.2, 0.2)
    # r=1.6487: -min(-3.297, -2.4) = 3.297 ; r=0.6065: -min(-1.213, clip 0.8 * -2 = -1.6) = 1.6
    expected = (2 * math.exp(0.5) + 1.6) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sequence_mean_aggregation_by_hand():
    per_step = torch.tensor([[1.0, 3.0], [4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert aggregate(per_step, mask, "sequence_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(per_step, mask, "token_mean").item() == pytest.approx(8.0 / 3)


def test_k3_by_hand():
    # delta = ref - logp = -1 -> e^-1 + 1 - 1
    assert kl_k3(torch.tensor([0.0]), torch.tensor([-1.0])).item() == pytest.approx(math.exp(-1), abs=1e-7)


def test_sequence_kl_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 9.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # row 0: mean(0.5, -1.0) over its two masked steps; row 1: 0.5 on its one step
    assert torch.allclose(sequence_kl(logprobs, ref, mask), torch.tensor([-0.25, 0.5]))
    assert sequence_kl(logprobs, ref, torch.zeros_like(mask)).tolist() == [0.0, 0.0]


def test_kl_in_the_advantage_is_carve3d_normalised_difference():
    """Carve3D: A = z(r) - beta * z(KL) within each prompt's group."""
    from mmpost.algos.advantages import group_advantages
    from mmpost.stages import compute_advantages
    from mmpost.stages.spec import KL, Sampling, Stage

    rewards, group = torch.tensor([1.0, 2.0, 4.0, 0.0]), torch.tensor([0, 0, 1, 1])
    logprobs = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-2.0, -2.0], [-1.0, -1.0]])
    ref = torch.tensor([[-1.2, -1.0], [-1.0, -1.0], [-2.0, -3.0], [-1.0, -1.0]])
    rollout = SimpleNamespace(rewards=rewards, group=group, logprobs=logprobs, ref_logprobs=ref, mask=torch.ones(4, 2))
    compute_advantages(rollout, Stage(kind="rl", batch_size=2,
                                      kl=KL(coef=0.2, where="advantage"),
                                      sampling=Sampling(group_size=2)))
    kl = torch.tensor([0.1, 0.0, 0.5, 0.0])  # mean over steps of logp - ref
    z = lambda v: group_advantages(v, group)  # noqa: E731
    assert torch.allclose(rollout.advantages, z(rewards) - 0.2 * z(kl))
    # in the loss instead (the default), advantages are the rewards' alone
    compute_advantages(rollout, Stage(kind="rl", batch_size=2,
                                      kl=KL(coef=0.2),
                                      sampling=Sampling(group_size=2)))
    assert torch.allclose(rollout.advantages, z(rewards))


class _SingleProcess:
    """Stands in for accelerate on one process: gather / reduce / ... return their input (metrics only)."""

    num_processes = 1

    def __getattr__(self, name):
        return lambda value, *args, **kwargs: value


def _trl_loss(loss_type, logprobs, old, ref, advantages, mask, beta, eps_low, eps_high, level="token"):
    """TRL's own GRPOTrainer._compute_loss, with only the model forward replaced by given log-probs."""
    from trl import GRPOTrainer

    n, t = logprobs.shape
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, torch.zeros(n, t), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, importance_sampling_level=level, beta=beta,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, off_policy_mask_threshold=None,
        use_vllm=False, vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        max_completion_length=t, model=SimpleNamespace(training=True), _entropy_bonus_enabled=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=_SingleProcess(),
        _metrics={"train": __import__("collections").defaultdict(list)},
    )
    inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
              "completion_ids": torch.zeros(n, t, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("loss_type,aggregation", [("bnpo", "token_mean"), ("dapo", "token_mean"),
                                                   ("grpo", "sequence_mean"), ("dr_grpo", "max_length")])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("level", ["token", "sequence"])  # sequence: GSPO
def test_agrees_with_trl(loss_type, aggregation, beta, level):
    pytest.importorskip("trl")
    torch.manual_seed(1)
    n, t = 6, 5
    logprobs = -torch.rand(n, t) * 2
    old = logprobs + 0.3 * torch.randn(n, t)  # ratios well outside the clip range too
    ref = logprobs + 0.2 * torch.randn(n, t)
    advantages = torch.randn(n)
    mask = (torch.rand(n, t) > 0.3).float()
    mask[:, 0] = 1
    try:
        expected = _trl_loss(loss_type, logprobs, old, ref, advantages, mask, beta, 0.2, 0.28, level)
    except (AttributeError, KeyError, TypeError) as error:  # TRL internals moved: report, don't hide
        pytest.fail(f"TRL's _compute_loss changed its internals: {error!r}")
    ours, _ = clipped_pg_loss(logprobs, old, advantages, mask, 0.2, 0.28, aggregation, ratio_level=level,
                              max_length=t)
    if beta:
        ours = ours + beta * aggregate(kl_k3(logprobs, ref), mask, aggregation, max_length=t)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)


def test_gspo_sequence_ratio_by_hand():
    # one output, steps log-ratios 0.2 and -0.1 (third is padding): s = exp(0.05) on both real steps
    logprobs = torch.tensor([[0.2, -0.1, 5.0]], requires_grad=True)
    old, mask = torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 0.0]])
    loss, metrics = clipped_pg_loss(logprobs, old, torch.tensor([1.0]), mask, 0.2, 0.2, "sequence_mean",
                                    ratio_level="sequence")
    assert loss.item() == pytest.approx(-math.exp(0.05), abs=1e-6)
    assert metrics["ratio_mean"] == pytest.approx(math.exp(0.05), abs=1e-6)
    loss.backward()  # d(-s)/d logp_t = -s / |o| on each real step (GSPO's gradient), 0 on padding
    assert torch.allclose(logprobs.grad, torch.tensor([[-math.exp(0.05) / 2, -math.exp(0.05) / 2, 0.0]]))


def test_dr_grpo_constant_normaliser_by_hand():
    per_step = torch.tensor([[1.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(per_step, mask, "max_length", max_length=4).item() == pytest.approx(8.0 / (2 * 4))


def test_k1_k2_by_hand():
    from mmpost.algos.kl import per_step_kl

    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert per_step_kl(logp, ref, "k1").item() == pytest.approx(0.5)
    assert per_step_kl(logp, ref, "k2").item() == pytest.approx(0.125)
    assert per_step_kl(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        per_step_kl(logp, ref, "k4")


def test_full_forward_kl_matches_torch_kl_div():
    from mmpost.algos.kl import full_forward_kl

    torch.manual_seed(0)
    logits, ref = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), torch.softmax(ref, -1),
                                          reduction="none").sum(-1)
    assert torch.allclose(full_forward_kl(logits, ref), expected, atol=1e-6)
    logits[..., 0] = ref[..., 0] = float("-inf")  # a suppressed token in both: contributes 0, not NaN
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits[..., 1:], -1), torch.softmax(ref[..., 1:], -1),
                                          reduction="none").sum(-1)
    assert torch.allclose(full_forward_kl(logits, ref), expected, atol=1e-6)


def _trl_rloo_loss(logprobs, old_logps, advantages, mask, eps_low, eps_high):
    """TRL's RLOOTrainer._compute_loss with only the model forward replaced by given log-probs."""
    from trl import RLOOTrainer

    n, t = logprobs.shape
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, torch.zeros(n, t), None),
        aux_loss_enabled=False, epsilon_low=eps_low, epsilon_high=eps_high, model=SimpleNamespace(training=True),
        accelerator=_SingleProcess(), _metrics={"train": __import__("collections").defaultdict(list)},
    )
    inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
              "completion_ids": torch.zeros(n, t, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_logps": old_logps}
    return RLOOTrainer._compute_loss(fake, None, inputs)


def test_rloo_loss_agrees_with_trl():
    pytest.importorskip("trl")
    torch.manual_seed(2)
    n, t = 6, 4
    logprobs = -torch.rand(n, t)
    old = logprobs + 0.1 * torch.randn(n, t)
    mask = (torch.rand(n, t) > 0.3).float()
    mask[:, 0] = 1
    from mmpost.algos.advantages import rloo_advantages

    advantages = rloo_advantages(torch.rand(n), torch.tensor([0, 0, 0, 1, 1, 1]))
    try:
        expected = _trl_rloo_loss(logprobs, (old * mask).sum(-1), advantages, mask, 0.2, 0.28)
    except (AttributeError, KeyError, TypeError) as error:
        pytest.fail(f"TRL's RLOOTrainer._compute_loss changed its internals: {error!r}")
    ours, _ = clipped_pg_loss(logprobs, old, advantages, mask, 0.2, 0.28, ratio_level="sequence_sum")
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)


def test_entropy_of_logits_by_hand():
    from mmpost.algos.kl import entropy

    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, float("-inf")]])  # uniform over 4, one token suppressed
    assert entropy(logits).item() == pytest.approx(math.log(4))
