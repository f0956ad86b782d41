"""Choosing which modules train (``trainable`` / ``frozen`` patterns), e.g. the vision tower only."""

import pytest
import torch

from mmpost.adapters.token_policy import TokenPolicy
from mmpost.optim import select_trainable


def test_vision_tower_only_and_frozen_tower(composed_model_dir):
    policy = TokenPolicy.from_pretrained(composed_model_dir)
    model = policy.model
    select_trainable(model, ["vision_tower"], [])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("vision_tower" in n for n in trained)
    assert len(trained) == sum("vision_tower" in n for n, _ in model.named_parameters())

    select_trainable(model, [], ["vision_tower", "*embed_tokens*"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("vision_tower" in n or "embed_tokens" in n for n in trained)
    assert any("multi_modal_projector" in n for n in trained) and any("layers.0" in n for n in trained)


def test_a_pattern_matching_nothing_is_an_error(composed_model_dir):
    policy = TokenPolicy.from_pretrained(composed_model_dir)
    with pytest.raises(ValueError, match="vison_tower.*matches no parameter"):
        select_trainable(policy.model, ["vison_tower"], [])
    with pytest.raises(ValueError, match="leave no parameter"):
        select_trainable(policy.model, ["vision_tower"], ["vision_tower"])


def test_training_the_tower_only_leaves_the_lm_unchanged(composed_model_dir):
    from PIL import Image

    torch.manual_seed(0)
    policy = TokenPolicy.from_pretrained(composed_model_dir)
    select_trainable(policy.model, ["vision_tower"], [])
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    row = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find the red circle."}]}],
           "images": [Image.new("RGB", (112, 112), "red")], "completion": "the first image"}
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=1e-2)
    logprobs, mask = policy.demo_logprobs([row])
    (-(logprobs * mask).sum()).backward()
    optimizer.step()
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    tower = {n for n in before if "vision_tower" in n}
    assert changed <= tower and len(changed) > len(tower) // 2
