"""The clipped policy-gradient loss: by hand, and against TRL's GRPOTrainer loss on the same inputs."""

import math
from types import SimpleNamespace

import pytest
import torch

from mmpost.algos.kl import kl_k3
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


def test_luffy_policy_shaping_by_hand():
    """LUFFY: a demonstration's tokens lose ``-A p/(p + g)`` (current p, no clip, even at a ratio far
    outside the clip range) and get the gradient ``-A g p/(p + g)^2`` per log-prob; sampled outputs keep
    the clipped loss."""
    from mmpost.algos.pg import clipped_pg_loss

    logprobs = torch.log(torch.tensor([[0.5, 0.02], [0.5, 0.5]])).requires_grad_()
    old = torch.log(torch.tensor([[0.1, 0.1], [0.5, 0.5]]))  # demo row: ratios 5 and 0.2, outside [0.8, 1.2]
    advantages = torch.tensor([2.0, -1.0])
    mask = torch.ones(2, 2)
    off_policy = torch.tensor([True, False])
    loss, _ = clipped_pg_loss(logprobs, old, advantages, mask, aggregation="token_mean", off_policy=off_policy,
                              shaping_gamma=0.1)
    shaped = [-2.0 * p / (p + 0.1) for p in (0.5, 0.02)]
    assert loss.item() == pytest.approx((sum(shaped) + 1.0 + 1.0) / 4)  # sampled row: ratio 1, -A = 1 per step
    loss.backward()
    expected = [-2.0 * 0.1 * p / (p + 0.1) ** 2 / 4 for p in (0.5, 0.02)]
    assert logprobs.grad[0].tolist() == pytest.approx(expected)
    plain, _ = clipped_pg_loss(logprobs, old, advantages, mask, aggregation="token_mean", off_policy=off_policy)
    assert plain.item() != pytest.approx(loss.item())  # shaping off (gamma 0): the demo is clipped like a sample


def test_dual_clip_bounds_negative_advantages():
    logp = torch.log(torch.tensor([[5.0, 5.0]]))  # ratio 5 against old log-prob 0
    old, mask = torch.zeros(1, 2), torch.ones(1, 2)
    adv = torch.tensor([[-1.0, 1.0]])
    plain, _ = clipped_pg_loss(logp, old, adv, mask, aggregation="token_mean")
    dual, _ = clipped_pg_loss(logp, old, adv, mask, aggregation="token_mean", dual_clip=3.0)
    # A<0: -min(5*-1, 1.2*-1) = 5 -> dual-clip caps at 3; A>0: -min(5, 1.2) = -1.2
    assert torch.allclose(plain, torch.tensor((5.0 - 1.2) / 2))
    assert torch.allclose(dual, torch.tensor((3.0 - 1.2) / 2))


def test_rloo_logged_loss_leaves_out_outputs_whose_mask_was_zeroed():
    """RLOO (summed sequence ratio): an output filtered out (its mask zeroed, e.g. truncated under
    DAPO's mask_truncated) adds nothing to the loss value; the gradient is the one the filter implies."""
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-1.5, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0], [-0.5, -0.7], [-1.0, -1.0]])
    advantages = torch.tensor([1.0, -0.5, 2.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # the third output was filtered out
    loss, _ = clipped_pg_loss(logprobs, old, advantages, mask, 0.2, 0.2, ratio_level="sequence_sum")
    # by hand: r1 = exp(0.1) = 1.105 (inside the clip), r2 = exp(0.2) = 1.221 -> clipped 1.2 with A < 0: min(-0.611, -0.6)
    r1, r2 = math.exp(0.1), math.exp(0.2)
    expected = (-(r1 * 1.0) + -min(r2 * -0.5, 1.2 * -0.5)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.all(logprobs.grad[2] == 0)
    assert logprobs.grad[0, 0].item() == pytest.approx(-r1 / 3, abs=1e-6)
