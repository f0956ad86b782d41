"""The decode loop's sampler against the distribution it samples from."""

import torch

from mmpost.adapters.decoding import sample_next, takes_boolean_mask


def test_inverse_cdf_sampling_matches_the_distribution_and_never_draws_a_suppressed_token():
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    logprobs = probs.log()  # log 0 = -inf, as a suppressed token's log-prob
    draws = torch.stack([sample_next(logprobs) for _ in range(20000)])  # [draws, rows]
    for row in range(3):
        frequency = torch.bincount(draws[:, row], minlength=4).float() / len(draws)
        # binomial standard error at 20000 draws is <= 0.0036: 4 of them
        assert torch.allclose(frequency, probs[row], atol=0.015), (row, frequency)
        assert frequency[probs[row] == 0].sum() == 0


def test_only_sdpa_with_full_attention_everywhere_gets_the_boolean_mask():
    from transformers import MistralConfig, Qwen2Config

    assert takes_boolean_mask(Qwen2Config(num_hidden_layers=2, attn_implementation="sdpa"))
    assert not takes_boolean_mask(Qwen2Config(num_hidden_layers=2, attn_implementation="eager"))
    assert not takes_boolean_mask(Qwen2Config(num_hidden_layers=2, attn_implementation="sdpa", use_sliding_window=True,
                                              sliding_window=16, max_window_layers=0))
    assert not takes_boolean_mask(MistralConfig(num_hidden_layers=2, attn_implementation="sdpa", sliding_window=16))
    assert takes_boolean_mask(MistralConfig(num_hidden_layers=2, attn_implementation="sdpa", sliding_window=None))


def test_rows_end_at_eos_pad_after_it_and_the_loop_stops_when_all_have_ended(tiny_model_dir):
    """With every token but EOS and one other suppressed, rows end at random steps: each row is padded
    after its EOS, the loop stops at the last row's EOS, and the log-probs of the real tokens (EOS
    included) equal a teacher-forced forward."""
    from mmpost.adapters.token_policy import TokenPolicy

    torch.manual_seed(0)
    policy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=40)
    other = next(i for i in range(len(policy.tokenizer)) if i not in (policy.eos_id, policy.pad_id))
    vocab = policy.model.config.text_config.vocab_size
    policy.suppress_ids = [i for i in range(vocab) if i not in (policy.eos_id, other)]
    rows = [{"prompt": [{"role": "user", "content": text}], "seed": i} for i, text in enumerate(["a", "b c d"])]
    rollout = policy.rollout(rows, n=4, temperature=1.0)
    ids, mask = rollout.actions.completion_ids, rollout.mask.bool()
    ended_at = [int(row.tolist().index(policy.eos_id)) if policy.eos_id in row.tolist() else None for row in ids]
    assert all(e is not None for e in ended_at), "every row should end long before 40 tokens"
    assert ids.shape[1] == max(ended_at) + 1  # stopped as soon as the last row ended
    for row, end in zip(range(len(ids)), ended_at):
        assert set(ids[row, :end].tolist()) <= {other} and bool((ids[row, end + 1:] == policy.pad_id).all())
        assert int(mask[row].sum()) == end + 1
    assert len(set(ended_at)) > 1  # rows really ended at different steps
    torch.testing.assert_close(policy.logprobs(rollout).detach()[mask], rollout.logprobs[mask], atol=1e-5, rtol=0)
