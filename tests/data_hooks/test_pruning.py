"""DONOD: TOPSIS and the closed-form weight-update norms against their definitions."""

import math

import pytest
import torch

from mmpost.data_hooks.pruning import output_update_norms, topsis


def test_topsis_by_hand():
    # DON (benefit) [3, 4, 0] and NOD (cost) [0, 3, 4]: both columns have norm 5; weights 0.5 give
    # v = [[.3, 0], [.4, .3], [0, .4]], ideal (.4, 0), anti-ideal (0, .4)
    matrix = torch.tensor([[3.0, 0.0], [4.0, 3.0], [0.0, 4.0]])
    closeness = topsis(matrix, torch.tensor([0.5, 0.5]), torch.tensor([True, False]))
    expected = [0.5 / 0.6, math.sqrt(0.17) / (0.3 + math.sqrt(0.17)), 0.0]
    assert closeness.tolist() == pytest.approx(expected, abs=1e-6)


def test_update_norms_match_an_explicit_sgd_step():
    """DON and NOD from the closed form equal those of W - lr * grad, with grad from autograd."""
    torch.manual_seed(0)
    weight = torch.randn(7, 5)
    hidden = torch.randn(4, 5)
    targets = torch.tensor([1, 6, 6, 0])
    w = weight.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(hidden @ w.T, targets).backward()
    lr = 0.3
    step = -lr * w.grad
    don, nod = output_update_norms(hidden, hidden @ weight.T, targets, weight, lr)
    assert don == pytest.approx(float((weight + step).norm() - weight.norm()), abs=1e-5)
    assert nod == pytest.approx(float(step.norm()), abs=1e-6)


def test_donod_keeps_the_share_and_records_it(mmpost_home, tmp_path):
    from mmpost.data_hooks.pruning import donod_rows
    from mmpost.tasks.arithmetic import Arithmetic

    task = Arithmetic(Arithmetic.default_config())
    rows = task.rows("heldout")[:10]
    record = tmp_path / "donod-sft.json"
    kept = donod_rows(task.policy(), rows, 0.3, 1e-3, 4, record)
    assert len(kept) == 3 and all(r in rows for r in kept)
    saved = __import__("json").loads(record.read_text())
    best = sorted(range(10), key=lambda i: -saved["closeness"][i])[:3]
    assert sorted(best) == saved["rows"] and all(n > 0 for n in saved["nod"])
    assert donod_rows(None, rows, 0.3, 1e-3, 4, record) == kept  # reused on resume, no model needed
