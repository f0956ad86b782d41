"""The stage context's update step: non-finite losses are skipped, then stop the run."""

import math

import pytest
import torch


def test_nonfinite_loss_is_skipped_then_aborts():
    """A NaN loss skips the update (weights unchanged); max_nonfinite_steps in a row stop the run."""
    from mmpost.config import Stage
    from mmpost.stages.context import StageContext

    class Accelerator:
        def backward(self, loss):
            loss.backward()

        def clip_grad_norm_(self, params, max_norm):
            return torch.nn.utils.clip_grad_norm_(params, max_norm)

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    ctx = StageContext(Stage(name="sft", kind="sft"), None, None, [], {}, {}, Accelerator(), optimizer, scheduler,
                       [weight], max_nonfinite_steps=3)
    ctx.update((weight * torch.tensor([1.0, math.nan, 1.0])).sum())  # NaN loss
    ctx.update((weight * torch.tensor([1.0, math.inf, 1.0])).sum() * 0 + weight.sum() * math.inf)  # inf
    assert torch.equal(weight.detach(), torch.ones(3)) and ctx.state["nonfinite_in_a_row"] == 2
    ctx.update(weight.sum())  # a good step resets the streak and updates
    assert ctx.state["nonfinite_in_a_row"] == 0 and not torch.equal(weight.detach(), torch.ones(3))
    ctx.update(weight.sum() * math.nan)
    ctx.update(weight.sum() * math.nan)
    with pytest.raises(FloatingPointError, match="3 updates in a row"):
        ctx.update(weight.sum() * math.nan)
    assert ctx.state["nonfinite_total"] == 5
