"""Closed-loop data refinement during SFT (Middo: model-informed dynamic data optimization).

Every ``every`` steps the stage's rows are diagnosed on three model signals, with the thresholds
of Middo's code (``Word2VecT/Middo`` ``complexity_filter.py``, ``diversity_filter.py``,
``quality_filter.py``):

- complexity: a row whose mean token loss is above mean + 1 std both under the start-of-stage model
  and under the current one (hard before training and still hard);
- diversity: a row whose mean cosine similarity to its ``k`` = 2 nearest rows, by the model's mean
  last-layer hidden state over the prompt, is below mean - ``m`` std (an isolated row);
- quality: a row whose quality score is below mean - ``m`` std. Middo asks the model itself to grade
  clarity, completeness and factuality; here the score is the task's reward on the row's own
  demonstration (a verifier's grade, which a tiny model cannot give).

Flagged rows are rewritten, keeping the dataset's size: Middo prompts an LLM to simplify complex
rows, repair low-quality ones and synthesise neighbours of isolated ones. A task that can do this by
rule defines ``refine(row, axis, rng) -> row | None`` (arithmetic does); otherwise low-quality rows
are dropped and their places go to copies of the isolated rows, and complex rows are kept.
"""

from __future__ import annotations

import random

import torch


def complexity_flags(loss_start: torch.Tensor, loss_now: torch.Tensor) -> torch.Tensor:
    """Rows above mean + 1 std of both loss distributions."""
    return (loss_start > loss_start.mean() + loss_start.std(unbiased=False)) & \
        (loss_now > loss_now.mean() + loss_now.std(unbiased=False))


def sparse_flags(embeddings: torch.Tensor, m: float, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(flags, mean top-``k`` cosine similarity to the other rows): rows below mean - ``m`` std."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    nearest = similarity.topk(min(k, len(unit) - 1), dim=1).values.mean(1)
    return nearest < nearest.mean() - m * nearest.std(unbiased=False), nearest


def low_quality_flags(scores: torch.Tensor, m: float) -> torch.Tensor:
    """Rows below mean - ``m`` std (Middo's ``quality_filter.py``; sample std as there)."""
    spread = scores.std() if len(scores) > 1 else torch.tensor(0.0)
    return scores < scores.mean() - m * spread


def refined_dataset(rows: list, flags: dict[str, torch.Tensor], refine, seed: int | str) -> tuple[list, dict[str, int]]:
    """The next round's rows, as many as ``rows``: each entry the index of a kept row or a rewritten
    row (dict). ``flags``: boolean [N] per axis (complexity, diversity, quality); ``refine`` the
    task's rule-based rewriter or None. Flagged rows are rewritten in place (or, for quality without
    a rewriter, dropped); each isolated row gains a neighbour (or a copy), and as many unflagged rows,
    drawn with ``seed``, make room for them; dropped rows leave places to copies of kept rows."""
    rng = random.Random(seed)
    out, counts = [], {"rewritten": 0, "dropped": 0, "added": 0}
    for i, row in enumerate(rows):
        axis = next((a for a in ("quality", "complexity") if flags[a][i]), None)
        new = refine(row, axis, rng) if (refine and axis) else None
        if new is not None:
            out.append(new)
            counts["rewritten"] += 1
        elif axis == "quality":
            counts["dropped"] += 1  # no rewriter: a low-quality row leaves the data
        else:
            out.append(i)
    for i in range(len(rows)):
        if flags["diversity"][i]:
            new = refine(rows[i], "diversity", rng) if refine else None
            out.append(i if new is None else new)
            counts["added"] += 1
    flagged = {i for i in range(len(rows)) if any(bool(f[i]) for f in flags.values())}
    plain = [j for j, entry in enumerate(out) if isinstance(entry, int) and entry not in flagged]
    surplus = set(rng.sample(plain, min(len(plain), max(0, len(out) - len(rows)))))
    out = [entry for j, entry in enumerate(out) if j not in surplus]
    kept = [entry for entry in out if isinstance(entry, int)] or list(range(len(rows)))
    while len(out) < len(rows):  # more dropped than added: copies of kept rows fill the places
        out.append(rng.choice(kept))
        counts["added"] += 1
    return out, counts
