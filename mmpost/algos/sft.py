"""Supervised terms on demonstrations: NLL with a token-weight function, and its relatives.

The common form is ``L = sum_t w_t * (-log p_t) / N`` over demonstrated tokens, with
``w_t = sg(phi(p_t))`` (``shared/reference/algorithms.md`` §B):

* ``uniform``: ``phi = 1`` (plain SFT).
* ``dft``: ``phi(p) = p`` (DFT, arXiv 2508.05629; TRL ``sft_trainer.py::dft_loss``).
* ``chord``: ``phi(p) = p (1 - p)`` (CHORD-phi, arXiv 2508.11408; Trinity-RFT ``SFTPhiLossFn``).

Plus One-Token Rollout's token-level policy gradient, IFT's discounted future-loss weights on a temporal-residual forward, FAIT's up-weighting of the tokens where a faulty answer differs from the gold one, ssToken's
token selection by excess loss over a history model, and PoFT's preference of the policy over a
reference on the same demonstration.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmpost.algos.pg import aggregate

TOKEN_WEIGHTS = ("uniform", "dft", "chord")


def nll_loss(logprobs: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean",
             tokens: torch.Tensor | None = None) -> torch.Tensor:
    """``-mean log p(demo step)`` over real steps ([N, T] inputs); prompt tokens are not in ``mask``.
    ``tokens``: the token-mean normaliser (see :func:`~mmpost.algos.pg.aggregate`)."""
    return aggregate(-logprobs, mask, aggregation, tokens=tokens)


def token_weights(logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """[N, T] detached weights ``phi(p_t)`` of demonstrated tokens (see the module docstring)."""
    p = logprobs.detach().exp()
    if kind == "uniform":
        return torch.ones_like(p)
    if kind == "dft":
        return p
    if kind == "chord":
        return p * (1 - p)
    raise ValueError(f"unknown token weighting {kind!r}; expected one of {', '.join(TOKEN_WEIGHTS)}")


def weighted_nll(logprobs: torch.Tensor, mask: torch.Tensor, kind: str = "uniform",
                 aggregation: str = "token_mean", tokens: torch.Tensor | None = None) -> torch.Tensor:
    """``aggregate(-sg(phi(p_t)) log p_t)``: the SFT term with a token-weight function."""
    return aggregate(-token_weights(logprobs, kind) * logprobs, mask, aggregation, tokens=tokens)


def fait_weights(gold: torch.Tensor, gold_mask: torch.Tensor, gold_lines: torch.Tensor, faulty: torch.Tensor,
                 faulty_mask: torch.Tensor, faulty_lines: torch.Tensor, alpha: float = 1.0,
                 line_alpha: float = 0.5) -> torch.Tensor:
    """FAIT's error-sensitive weights on a gold answer against a faulty one, at two levels (arXiv
    2503.16913, as its method is summarised; no code was available): the gold lines that differ from
    the faulty answer's (``difflib`` over lines of token ids; ``*_lines`` [B, T] give each token's line)
    weigh ``1 + line_alpha``, and inside them the tokens that differ from the faulty line they replace
    (``difflib`` over tokens) ``1 + line_alpha + alpha``; unchanged lines weigh 1. [B, T] like ``gold``.
    The paper adjusts the weights during training by a rule that could not be read; they are constant here."""
    import difflib

    def lines(ids, mask, line_of):
        out: dict[int, list[int]] = {}
        for token, real, line in zip(ids.tolist(), mask.tolist(), line_of.tolist()):
            if real:
                out.setdefault(line, []).append(token)
        return [tuple(v) for _, v in sorted(out.items())]

    weights = torch.ones_like(gold_mask, dtype=torch.float32)
    for i in range(len(gold)):
        ours, theirs = lines(gold[i], gold_mask[i], gold_lines[i]), lines(faulty[i], faulty_mask[i], faulty_lines[i])
        row = []
        for tag, a0, a1, b0, b1 in difflib.SequenceMatcher(None, ours, theirs, autojunk=False).get_opcodes():
            for k in range(a0, a1):
                line = ours[k]
                if tag == "equal":
                    row += [1.0] * len(line)
                    continue
                counterpart = theirs[b0 + k - a0] if tag == "replace" and b0 + k - a0 < b1 else ()
                differs = [True] * len(line)
                for block in difflib.SequenceMatcher(None, line, counterpart, autojunk=False).get_matching_blocks():
                    differs[block.a:block.a + block.size] = [False] * block.size
                row += [1.0 + line_alpha + alpha * d for d in differs]
        weights[i, :len(row)] = torch.tensor(row)
    return weights


def ift_loss(logprobs: torch.Tensor, mask: torch.Tensor, gamma: float = 0.95) -> torch.Tensor:
    """IFT's loss on log-probs from the temporal-residual forward: each token weighted by the
    discounted sum of the per-token losses from it to the end, ``w_t = sum_{k>=t} gamma^(k-t) (-log p_k
    / |y|)``, rescaled so ``sum_t w_t = |y|``; ``L = mean_b[sum_t -w_t log p_t / |y|]``. As in the
    authors' code (``get_cumsum_weight``) the weights are not detached."""
    length = mask.sum(-1, keepdim=True).clamp(min=1.0)
    per_token = -logprobs * mask / length
    weights = torch.zeros_like(per_token)
    running = torch.zeros_like(per_token[:, 0])
    for t in reversed(range(per_token.shape[1])):
        running = per_token[:, t] + gamma * running
        weights[:, t] = running
    weights = weights * mask
    weights = weights * length / weights.sum(-1, keepdim=True).clamp(min=1e-12)
    return ((-weights * logprobs * mask).sum(-1) / length.squeeze(-1)).mean()


def otr_loss(log_probs: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
             miss_reward: float = -0.1, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """One-Token Rollout (arXiv 2509.26313): every demonstrated position is a one-step episode whose
    ``K`` actions are the ``candidates`` [B, T, K] sampled from the temperature-scaled policy (detached);
    a candidate equal to the demonstrated token earns 1, any other ``miss_reward`` (the paper's beta,
    slightly negative), and REINFORCE with no baseline gives, per position,
    ``-(1/K) sum_k R(c_k) log p(c_k)`` under the untempered policy, token-mean over positions:
    ``-(n/K) log p(gold) - beta sum_{a != gold} (c(a)/K) log p(a)``.

    The gold token is trained in proportion to how often it is sampled (DFT's ``sg(p)`` weight at
    temperature 1 and K -> inf), and sampled wrong tokens are pushed down, so a position with no hit
    still has a gradient when beta < 0. (Read from the paper's equations as restated in its ICLR 2026
    reviews; the authors' code and their beta and temperature values were not available.)
    ``tokens``: the token-mean normaliser (see :func:`~mmpost.algos.pg.aggregate`)."""
    hits = (candidates == targets.unsqueeze(-1)).to(log_probs.dtype)
    rewards = hits + miss_reward * (1 - hits)
    chosen = torch.gather(log_probs, 2, candidates)
    return aggregate(-(rewards * chosen).mean(-1), mask, "token_mean", tokens=tokens)


def sample_candidates(logits: torch.Tensor, k: int, temperature: float = 1.0) -> torch.Tensor:
    """[B, T, k] tokens sampled (with replacement) from ``softmax(logits / temperature)`` at each position."""
    probs = torch.softmax(logits.detach().float() / temperature, dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), k, replacement=True)
    return flat.view(*logits.shape[:2], k)


def qtuning_mask(logprobs: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, sample_keep: float = 0.25,
                 token_keep: float = 0.7, neighbour_weight: float = 0.5) -> torch.Tensor:
    """Q-Tuning's (arXiv 2509.23873; project page ``Q-tuning/Q-tuning`` ``docs/index.html``) sample triage and
    token pruning on the error-uncertainty plane. Returns the [B, T] mask of trained tokens.

    Per sample, error = perplexity of the demonstration and uncertainty = mean token entropy. A bisection
    on the quantile ``a`` in (0, 0.5] finds the smallest ``a`` whose quadrants keep at least
    ``sample_keep`` of the batch: confident misconceptions (perplexity above its ``1 - a`` quantile,
    entropy below its ``a`` quantile) and calibration samples (perplexity below ``a``, entropy above
    ``1 - a``); noise and redundant samples are dropped. Calibration samples are kept whole; of each
    misconception, the ``token_keep`` share of tokens with the highest
    ``(1 - lambda) PPL_i + lambda (PPL_{i-1} + PPL_{i+1})`` (``PPL_i = 1 / p_i``, ``lambda`` =
    ``neighbour_weight``). Defaults: the paper's headline budget (25% of samples, 70% of tokens); the
    exact form of the thresholds inside the bisection and lambda's value are unverified.
    """
    nll = (-logprobs * mask).detach().float()
    length = mask.sum(-1).clamp(min=1.0)
    ppl = torch.exp(nll.sum(-1) / length)
    uncertainty = (entropy.detach().float() * mask).sum(-1) / length

    def quadrants(a: float) -> tuple[torch.Tensor, torch.Tensor]:
        misconception = (ppl > torch.quantile(ppl, 1 - a)) & (uncertainty < torch.quantile(uncertainty, a))
        calibration = (ppl < torch.quantile(ppl, a)) & (uncertainty > torch.quantile(uncertainty, 1 - a))
        return misconception, calibration

    target = max(1, round(sample_keep * len(ppl)))
    low, high = 0.0, 0.5
    for _ in range(20):  # the kept count grows with a: the smallest a that reaches the target
        middle = (low + high) / 2
        if sum(int(q.sum()) for q in quadrants(middle)) >= target:
            high = middle
        else:
            low = middle
    misconception, calibration = quadrants(high)
    keep = torch.zeros_like(mask)
    keep[calibration] = mask[calibration]
    token_ppl = torch.exp(nll) * mask
    neighbours = torch.nn.functional.pad(token_ppl, (1, 0))[:, :-1] + torch.nn.functional.pad(token_ppl, (0, 1))[:, 1:]
    salience = ((1 - neighbour_weight) * token_ppl + neighbour_weight * neighbours).masked_fill(mask == 0, float("-inf"))
    for i in misconception.nonzero().squeeze(1).tolist():
        top = torch.topk(salience[i], max(1, int(round(token_keep * float(mask[i].sum()))))).indices
        keep[i, top] = 1.0
    return keep * mask


def sstoken_mask(logprobs: torch.Tensor, history_logprobs: torch.Tensor, mask: torch.Tensor, ratio: float,
                 attention: torch.Tensor | None = None, gamma: float = 1.0) -> torch.Tensor:
    """ssToken's token selection (``jianke0604/ssToken`` ``scripts/finetune_with_hook.py``,
    ``filter_tokens_with_attention_loss``): per sample, keep the ``ceil(ratio * length)`` demonstrated
    tokens of highest ``gamma * REL_norm + (1 - gamma) * attention``.

    ``REL = L_history - L_theta = log p_theta - log p_history`` is the retrospective excess loss over
    the history model (here the model at the start of the stage), min-max normalised over the sample's
    tokens; ``attention`` [B, T] is the semantic half: each token's head-averaged last-layer attention
    on the prompt (:meth:`TokenPolicy.demo_prompt_attention`). ``gamma = 1`` uses REL alone. (The
    reference code trains on attention alone for its first samples; that warm-up is not reproduced.)"""
    excess = (logprobs - history_logprobs).detach().float()
    selected = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        real = mask[i].bool()
        n = int(real.sum())
        if not n:
            continue
        rel = excess[i][real]
        score = gamma * (rel - rel.min()) / (rel.max() - rel.min() + 1e-8)
        if attention is not None and gamma < 1:
            score = score + (1 - gamma) * attention[i][real].float().to(score.device)
        top = torch.topk(score, math.ceil(ratio * n)).indices
        selected[i, real.nonzero().squeeze(1)[top]] = 1.0
    return selected * mask


def mean_loglik(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] each demonstration's mean-token log-likelihood (PoFT's score ``s``)."""
    return (logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def poft_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, mask: torch.Tensor,
              ref_scores: torch.Tensor | None = None) -> torch.Tensor:
    """PoFT (arXiv 2412.12865): Bradley-Terry preference of the policy over aligned reference models on
    the same demonstration, ``-log s(s_theta - s_ref)`` with ``s`` the mean-token log-likelihood; the
    gradient ``s(s_ref - s_theta) grad s_theta`` weights samples the references find likely.

    ``s_ref``: ``ref_scores`` [B] (aligned models scored under their own tokenizers, averaged), else
    from ``ref_logprobs`` on the policy's tokens. (With the start-of-stage model as the reference,
    ``s_ref = s_theta`` at first and the loss starts as a rescaled NLL.)"""
    s_theta = mean_loglik(logprobs, mask)
    s_ref = ref_scores.to(s_theta) if ref_scores is not None else mean_loglik(ref_logprobs, mask)
    return -F.logsigmoid(s_theta - s_ref).mean()
