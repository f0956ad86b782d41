"""mmpost's own decode loop for ``TokenPolicy`` rollouts: one forward per token, nothing else.

Why not transformers' ``generate``: a GRPO step samples ``n`` completions of each prompt, and what
it needs is narrower than what ``generate`` does for everyone. Three things make it cheaper here,
each measured by ``mmpost bench`` (README, "Speed and memory vs TRL"):

- **The shared prompt is encoded once per group.** The processor, the vision/audio tower and the
  prefill run on each distinct prompt; the KV cache is then repeated ``n`` times
  (``generate(num_return_sequences=n)`` expands the inputs *before* the prefill, so every copy of
  an image goes through the vision tower again).
- **Inverse-CDF sampling.** One uniform number per row and a search in the cumulative
  probabilities, instead of ``torch.multinomial``, which on CPU draws one random number per
  vocabulary entry (8 rows x 1k vocabulary: 18 us against 140 us per token here).
- **Log-probs kept as they are sampled**: one number per token, not the [N, T, V] scores
  ``output_scores`` keeps (5 GB for 8 x 1024 tokens of a 150k vocabulary).

Positions follow ``generate`` exactly: counted over the attention mask (left padding skipped), and
for multimodal-RoPE models (Qwen2-VL family) offset by the ``rope_deltas`` the model stores after
the prefill, so the sampled log-probs equal a teacher-forced forward over the whole sequence
(``tests/test_token_policy.py`` checks this for every model family).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from mmpost.adapters.hf import transformers_model
from mmpost.sharding import all_done, inference


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position counted over the attention mask, left padding skipped (as ``generate``)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def sample_next(logprobs: torch.Tensor) -> torch.Tensor:
    """One token per row from ``exp(logprobs)`` ([N, V], rows summing to 1), by inverse CDF: the first
    index whose cumulative probability exceeds a uniform draw (zero-probability tokens never win)."""
    cumulative = logprobs.exp().cumsum(-1)
    draw = torch.rand(cumulative.shape[0], 1, device=cumulative.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, draw, right=True).clamp(max=cumulative.shape[1] - 1).squeeze(1)


def _rope_deltas(model) -> torch.Tensor:
    """The per-row offset a multimodal-RoPE model stored during its prefill (text positions after
    the vision tokens continue from the largest vision position, not from the token count)."""
    for owner in (model, getattr(model, "model", None)):
        deltas = getattr(owner, "rope_deltas", None)
        if deltas is not None:
            return deltas
    raise ValueError(f"{type(model).__name__} uses multimodal RoPE but stored no rope_deltas after the prefill")


def takes_boolean_mask(config) -> bool:
    """Whether the model's decoder can be given the [N, 1, 1, L] boolean padding mask directly: SDPA
    attention with full (not sliding-window) attention in every layer, for which that mask is
    exactly what transformers would build from the 2-D one at every step (which costs more than the
    attention itself on a small model). Eager attention wants an additive float mask, FlashAttention
    the 2-D one, sliding-window layers a banded one: they get the 2-D mask."""
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", None) is False


def decode(model, prompt: dict[str, torch.Tensor], n: int, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_loop` in inference mode (no autograd state at all)."""
    with inference(model):
        return decode_loop(model, prompt, n, **settings)


def decode_loop(model, prompt: dict[str, torch.Tensor], n: int, *, max_new_tokens: int, temperature: float,
                greedy: bool, suppress_ids: list[int], eos_id: int, pad_id: int, multimodal_rope: bool,
                keeps_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` completions of each prompt in ``prompt`` (left-padded processor inputs, one row per
    distinct prompt), completions of a prompt adjacent: ``[P * n, T]`` token ids (``pad_id`` after
    EOS) and the log-prob of each under the sampling distribution (temperature-scaled logits with
    ``suppress_ids`` removed; greedy: the argmax of the same). ``T <= max_new_tokens``: the loop
    stops when every row has ended. (Inference mode: the results are cloned by the caller before
    they meet autograd.)"""
    prompt_mask = prompt["attention_mask"]
    positions = positions_from_mask(prompt_mask)
    # A multimodal-RoPE model (Qwen2-VL family) derives 3-D positions for vision tokens itself and
    # stores the offset its text positions then continue from; without vision input all three
    # axes are the text position.
    vision = multimodal_rope and any(key in prompt for key in ("image_grid_thw", "video_grid_thw"))
    extra = {}
    if not vision:
        extra["position_ids"] = positions.unsqueeze(0).expand(3, -1, -1) if multimodal_rope else positions
    if keeps_logits:
        extra["logits_to_keep"] = 1
    out = model(**prompt, use_cache=True, **extra)
    # transformers 5.x renamed past_key_values to cache (the old name warns, then goes in 5.40); a
    # PEFT wrapper passes either through to the model it wraps
    takes = inspect.signature(transformers_model(model).forward).parameters
    cache_arg = "cache" if "cache" in takes else "past_key_values"
    cache, logits = getattr(out, cache_arg), out.logits[:, -1]
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)
    rows, prompt_length = logits.shape[0], prompt_mask.shape[1]
    next_position = positions[:, -1:].repeat_interleave(n, 0)
    if vision:
        deltas = _rope_deltas(model).to(next_position.device)
        next_position = next_position + deltas.repeat_interleave(rows // deltas.shape[0], 0)
    # the whole sequence's padding mask, filled in once; each step attends to a growing slice of it
    attend = F.pad(prompt_mask.repeat_interleave(n, 0), (0, max_new_tokens), value=1)
    boolean = takes_boolean_mask(getattr(model.config, "text_config", model.config))
    attend = attend.bool()[:, None, None, :] if boolean else attend
    ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=logits.device)
    logprobs = torch.zeros(rows, max_new_tokens, device=logits.device)
    ended = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    suppressed = torch.tensor(suppress_ids, dtype=torch.long, device=logits.device)
    scale = not greedy and temperature != 1.0
    steps = 0
    for t in range(max_new_tokens):
        scores = logits.float() / temperature if scale else logits.float()  # (may be the logits: they are not reused)
        if suppress_ids:
            scores.index_fill_(1, suppressed, float("-inf"))
        step_logprobs = F.log_softmax(scores, dim=-1)
        token = step_logprobs.argmax(-1) if greedy else sample_next(step_logprobs)
        token = torch.where(ended, pad_id, token)
        ids[:, t] = token
        logprobs[:, t] = step_logprobs.gather(1, token[:, None]).squeeze(1)
        ended |= token == eos_id
        steps = t + 1
        if steps == max_new_tokens or all_done(bool(ended.all()), model):  # (a sharded model: on every process)
            break
        next_position = next_position + 1
        position_ids = next_position.unsqueeze(0).expand(3, -1, -1) if multimodal_rope else next_position
        logits = model(input_ids=token[:, None], attention_mask=attend[..., :prompt_length + steps].contiguous(),
                       position_ids=position_ids, use_cache=True, **{cache_arg: cache}).logits[:, -1]
    return ids[:, :steps], logprobs[:, :steps]
