"""Preference losses on (chosen, rejected) pairs, as functions of sequence log-probs.

Inputs are per-pair tensors [B]: ``logp_*`` the policy's summed log-prob of a completion,
``ref_*`` the frozen reference's, ``len_*`` completion lengths in tokens. Each function returns the
per-pair loss [B]; the caller averages. Formulas as TRL 1.16 writes them (``DPOTrainer._compute_loss``:
sigmoid, ipo with its length normalisation, sigmoid_norm; CPO's simpo; ORPO's ``odds_ratio_loss``)
and CheXalign's ``rdpo_trainer.py``; ``tests/test_preference_losses.py`` checks them against TRL's trainers.
With ``D_w = logp_w - ref_w``, ``D_l = logp_l - ref_l``:

* DPO (sigmoid): ``-log s(b (D_w - D_l))``; cDPO (label smoothing ``e``):
  ``-(1 - e) log s(b x) - e log s(-b x)``; robust DPO: ``[(1 - e) L(b x) - e L(-b x)] / (1 - 2e)``.
* IPO: ``(D_w / |y_w| - D_l / |y_l| - 1 / (2 b))^2`` (TRL normalises by length).
* R-DPO: ``-log s(b (D_w - D_l) + a (|y_w| - |y_l|))`` (CheXalign ``rdpo_trainer.py``).
* length-normalised DPO (TULU 3): ``-log s(b (D_w / |y_w| - D_l / |y_l|))``.
* SimPO (reference-free): ``-log s(b logp_w / |y_w| - b logp_l / |y_l| - g)``.
* ORPO's odds-ratio term: ``-log s(log odds(y_w) - log odds(y_l))`` with
  ``odds = P / (1 - P)``, ``P = exp(mean-token log-prob)``; weighted by ``lambda`` beside the NLL.
* KTO (unpaired, TRL ``kto_trainer.py``): ``z0 = max(0, mean D')`` over mismatched completions
  (detached); desirable ``l_D (1 - s(b (D - z0)))``, undesirable ``l_U (1 - s(b (z0 - D)))``.

:func:`best_worst_pairs` builds pairs from rewarded samples (CheXalign: best vs worst of n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo(logp_w, logp_l, ref_w, ref_l, beta: float = 0.1, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO's sigmoid loss; ``label_smoothing`` > 0 gives cDPO (labels flipped with that probability)."""
    margin = beta * ((logp_w - ref_w) - (logp_l - ref_l))
    return -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)


def robust_dpo(logp_w, logp_l, ref_w, ref_l, beta: float = 0.1, label_smoothing: float = 0.1) -> torch.Tensor:
    """Robust DPO (TRL ``robust``): ``[(1 - e) L(b x) - e L(-b x)] / (1 - 2 e)`` with
    ``L(z) = -log s(z)``: unbiased under labels flipped with probability ``e < 0.5``."""
    margin = beta * ((logp_w - ref_w) - (logp_l - ref_l))
    return (-(1 - label_smoothing) * F.logsigmoid(margin) + label_smoothing * F.logsigmoid(-margin)) \
        / (1 - 2 * label_smoothing)


def ipo(logp_w, logp_l, ref_w, ref_l, len_w, len_l, beta: float = 0.1) -> torch.Tensor:
    """IPO: squared distance of the length-averaged log-ratio margin from ``1 / (2 beta)``."""
    margin = (logp_w - ref_w) / len_w - (logp_l - ref_l) / len_l
    return (margin - 1 / (2 * beta)) ** 2


def rdpo(logp_w, logp_l, ref_w, ref_l, len_w, len_l, beta: float = 0.1, alpha: float = 0.05) -> torch.Tensor:
    """R-DPO: DPO with a length term ``alpha (|y_w| - |y_l|)`` inside the sigmoid."""
    margin = beta * ((logp_w - ref_w) - (logp_l - ref_l)) + alpha * (len_w - len_l)
    return -F.logsigmoid(margin)


def dpo_length_normalized(logp_w, logp_l, ref_w, ref_l, len_w, len_l, beta: float = 5.0) -> torch.Tensor:
    """TULU 3's length-normalised DPO (TRL ``sigmoid_norm``)."""
    margin = beta * ((logp_w - ref_w) / len_w - (logp_l - ref_l) / len_l)
    return -F.logsigmoid(margin)


def simpo(logp_w, logp_l, len_w, len_l, beta: float = 2.5, gamma: float = 1.375) -> torch.Tensor:
    """SimPO: reference-free, length-averaged rewards with a target margin ``gamma``."""
    return -F.logsigmoid(beta * logp_w / len_w - beta * logp_l / len_l - gamma)


def orpo_odds_ratio(mean_logp_w, mean_logp_l) -> torch.Tensor:
    """ORPO's odds-ratio term from mean-token log-probs (``log(1 - P)`` computed stably)."""
    def log_odds(mean_logp):
        return mean_logp - torch.log(-torch.expm1(mean_logp))

    return -F.logsigmoid(log_odds(mean_logp_w) - log_odds(mean_logp_l))


def asft(mean_logp_w, mean_logp_l) -> torch.Tensor:
    """ASFT (arXiv 2409.10571), reference-free: each response's own likelihood pushed up (chosen) or
    down (rejected), ``-log s(log p_w) - log s(-log p_l)`` on mean-token log-probs. The paper's exact
    normalisation is unverified (abstract only); the caller adds the NLL of the chosen answer."""
    return -F.logsigmoid(mean_logp_w) - F.logsigmoid(-mean_logp_l)


def kto(logp, ref, desirable, kl_logp, kl_ref, beta: float = 0.1, weight_desirable: float = 1.0,
        weight_undesirable: float = 1.0) -> torch.Tensor:
    """KTO on unpaired completions: ``desirable`` [B] bool; ``kl_logp`` / ``kl_ref`` the log-probs of
    mismatched (prompt, completion) pairs, whose mean log-ratio is the reference point ``z0``."""
    z0 = (kl_logp - kl_ref).mean().clamp(min=0).detach()
    ratio = logp - ref
    return torch.where(desirable, weight_desirable * (1 - torch.sigmoid(beta * (ratio - z0))),
                       weight_undesirable * (1 - torch.sigmoid(beta * (z0 - ratio))))


def best_worst_pairs(rewards: torch.Tensor, group: torch.Tensor, min_spread: float = 1e-8) -> list[tuple[int, int]]:
    """(chosen, rejected) indices per group: the highest- and lowest-rewarded sample, groups whose
    rewards spread by no more than ``min_spread`` dropped (CheXalign ``get_preference.py``)."""
    pairs = []
    for g in torch.unique(group).tolist():
        members = (group == g).nonzero().squeeze(1)
        values = rewards[members]
        if values.numel() < 2 or float(values.max() - values.min()) <= min_spread:
            continue
        pairs.append((int(members[values.argmax()]), int(members[values.argmin()])))
    return pairs
