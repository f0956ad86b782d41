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
