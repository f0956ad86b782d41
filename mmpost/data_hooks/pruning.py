"""Dataset pruning before a stage: DONOD (model-intrinsic, from weight-update metrics) with TOPSIS.

DONOD scores each training sample by the update one SGD step on it alone would make to the
weights: DON (delta of norm) = ||W + dW|| - ||W||, its cumulative influence on the weights, and NOD
(norm of delta) = ||dW||, how violently it moves them. The samples are ranked by TOPSIS over the
two criteria and the best ``keep`` share is trained on (the paper keeps 30%).

What is ours, as the paper's code could not be read here: W is the output projection (the
unembedding), dW = -lr * grad_W of the sample's mean token NLL, computed in closed form from one
batched forward without a backward (``grad_W = (1/n) sum_t (p_t - y_t) h_t^T``, so
``||grad_W||^2 = (1/n^2) sum_{t,s} (e_t . e_s)(h_t . h_s)`` and ``<W, grad_W> = (1/n) sum_t e_t . W h_t``,
with ``e_t = p_t - y_t``); DON counts as a benefit and NOD as a cost, with equal TOPSIS weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmpost.checkpoint import write_json_atomic
from mmpost.policy import eval_mode


def topsis(matrix: torch.Tensor, weights: torch.Tensor, benefit: torch.Tensor) -> torch.Tensor:
    """TOPSIS closeness in [0, 1] of each row of ``matrix`` [N, C] (alternatives x criteria): columns
    vector-normalised and weighted; distance to the ideal (best per criterion: max where ``benefit``,
    min otherwise) and to the anti-ideal; closeness = d_worst / (d_best + d_worst)."""
    norm = matrix / matrix.pow(2).sum(0).sqrt().clamp(min=1e-12)
    weighted = norm * weights
    best = torch.where(benefit, weighted.max(0).values, weighted.min(0).values)
    worst = torch.where(benefit, weighted.min(0).values, weighted.max(0).values)
    d_best = (weighted - best).norm(dim=1)
    d_worst = (weighted - worst).norm(dim=1)
    return d_worst / (d_best + d_worst).clamp(min=1e-12)


def output_update_norms(hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                        lr: float) -> tuple[float, float]:
    """(DON, NOD) of one SGD step of size ``lr`` on one sample's mean token NLL, for the output
    projection ``weight`` [V, D]: ``hidden`` [n, D] the final hidden states at the sample's real
    positions, ``logits`` [n, V] their logits (``hidden @ weight.T`` for a bias-free head), ``targets`` [n]."""
    n = len(targets)
    errors = torch.softmax(logits.float(), -1)
    errors[torch.arange(n), targets] -= 1.0  # d(NLL_t) / d(logits_t) = p_t - y_t
    hidden, weight = hidden.float(), weight.float()
    grad_sq = ((errors @ errors.T) * (hidden @ hidden.T)).sum() / n ** 2
    inner = (errors * (hidden @ weight.T)).sum() / n  # <W, grad_W>
    w_sq = weight.pow(2).sum()
    updated = (w_sq - 2 * lr * inner + lr ** 2 * grad_sq).clamp(min=0).sqrt()
    return float(updated - w_sq.sqrt()), float(lr * grad_sq.sqrt())


@torch.no_grad()
def donod_rows(policy, rows: list[dict], keep: float, lr: float, batch_size: int, record: Path) -> list[dict]:
    """The best ``keep`` share of ``rows`` by DONOD; the choice (with every row's DON, NOD and
    closeness) is saved in ``record`` (JSON) and reused when it exists, so a resumed run trains on
    the same rows."""
    if record.exists():
        return [rows[i] for i in json.loads(record.read_text())["rows"]]
    from tqdm.auto import tqdm

    weight = policy.model.get_output_embeddings().weight
    don, nod = [], []
    with eval_mode(policy.model):
        for start in tqdm(range(0, len(rows), batch_size), desc="DONOD scoring", unit="batch"):
            chunk = rows[start:start + batch_size]
            hidden, logits, ids, mask = policy.demo_hidden_states(chunk)
            for h, l, y, m in zip(hidden, logits, ids.to(hidden.device), mask.bool()):
                d, n = output_update_norms(h[m], l[m], y[m], weight, lr)
                don.append(d)
                nod.append(n)
    closeness = topsis(torch.tensor([don, nod]).T, torch.tensor([0.5, 0.5]), torch.tensor([True, False]))
    count = max(1, round(keep * len(rows)))
    chosen = sorted(torch.topk(closeness, count).indices.tolist())
    write_json_atomic(record, {"rows": chosen, "keep": keep, "don": don, "nod": nod,
                               "closeness": closeness.tolist()})
    return [rows[i] for i in chosen]
