"""TokenPolicy on the real tiny Qwen2-VL: sampled vs recomputed log-probs, SFT, save/load, and the
inputs of the token-level SFT terms it computes (ssToken's prompt attention, IFT's mixed embeddings)."""

import json

import pytest
import torch

from mmpost.adapters.token_policy import TokenPolicy
from mmpost.data.charts import chart_program
from mmpost.tasks.chart2code import make_row


@pytest.fixture(scope="module")
def rows():
    from PIL import Image

    images = [Image.new("RGB", (112, 112), color) for color in ("white", "red", "blue")]
    return [make_row(img, chart_program(i)["code"], seed=i) for i, img in enumerate(images)]


def test_sampled_logprobs_equal_recomputed(tiny_model_dir, rows):
    torch.manual_seed(0)
    policy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=12)
    rollout = policy.rollout(rows, n=3, temperature=0.9)
    assert rollout.logprobs.shape == rollout.mask.shape and len(rollout) == 9
    assert rollout.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    recomputed = policy.logprobs(rollout)
    assert recomputed.requires_grad
    assert torch.allclose(recomputed.detach(), rollout.logprobs, atol=1e-5)
    ratio = torch.exp(recomputed.detach() - rollout.logprobs)[rollout.mask.bool()]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    assert set(rollout.columns) == {"code", "seed"}


def test_sft_learns_and_masks_prompt(tiny_model_dir, rows):
    torch.manual_seed(0)
    policy = TokenPolicy.from_pretrained(tiny_model_dir)
    logprobs, mask = policy.demo_logprobs(rows)
    target = policy.tokenizer(rows[0]["completion"] + policy.tokenizer.eos_token, add_special_tokens=False)
    assert int(mask[0].sum()) == len(target["input_ids"])  # completion + EOS only, no prompt tokens
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logprobs, mask = policy.demo_logprobs(rows)
        loss = -(logprobs * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_save_and_from_pretrained_roundtrip(tiny_model_dir, rows, tmp_path):
    policy = TokenPolicy.from_pretrained(tiny_model_dir)
    policy.save(tmp_path / "saved")
    again = TokenPolicy.from_pretrained(tmp_path / "saved")
    a, _ = policy.demo_logprobs(rows[:1])
    b, _ = again.demo_logprobs(rows[:1])
    assert torch.equal(a, b)
    assert type(again.model).__name__ == "Qwen2VLForConditionalGeneration"


def _two_image_rows():
    """Prompts with two images each (different sizes), as a multi-image grounding or comparison task has."""
    from PIL import Image

    rows = []
    for i, (a, b) in enumerate([("white", "red"), ("blue", "green")]):
        content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which differs?"}]
        rows.append({"prompt": [{"role": "user", "content": content}],
                     "images": [Image.new("RGB", (112, 112), a), Image.new("RGB", (56, 84), b)],
                     "completion": "the second", "seed": i})
    return rows


def _video_rows():
    """Prompts with a video each (Qwen2-VL's video input, frames through qwen-vl-utils)."""
    from mmpost.data.motion import render, video
    from mmpost.tasks.video_qa import frames_for_model

    rows = []
    for seed in (0, 1):
        content = [{"type": "video"}, {"type": "text", "text": "Which way does it move?"}]
        rows.append({"prompt": [{"role": "user", "content": content}],
                     "videos": [frames_for_model(render(video(seed)))], "completion": "left", "seed": seed})
    return rows


# model family -> the fixture that builds it (the video family is Qwen2-VL given videos)
FAMILY_MODELS = {"qwen2_vl": "tiny_model_dir", "llava_clip": "composed_model_dir",
                 "timm_convnext": "timm_composed_model_dir", "qwen2_vl_video": "tiny_model_dir"}


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_multi_image_and_video_groups_truncated_at_max_length_rescore_exactly(family, request):
    """GRPO groups of multi-image prompts whose completions all hit max_new_tokens: the recomputed
    log-probs match the sampled ones (no image-token/feature mismatch), and a policy-gradient loss
    backpropagates into the vision tower."""
    torch.manual_seed(0)
    path = request.getfixturevalue(FAMILY_MODELS[family])
    policy = TokenPolicy.from_pretrained(path, max_new_tokens=3)
    policy.suppress_ids.append(policy.eos_id)  # force every completion to be truncated, not ended
    rows = _video_rows() if family.endswith("video") else _two_image_rows()
    rollout = policy.rollout(rows, n=4, temperature=1.0)
    assert rollout.mask.shape == (8, 3) and bool(rollout.mask.all())
    assert bool(rollout.truncated.all())
    recomputed = policy.logprobs(rollout)
    assert torch.allclose(recomputed.detach(), rollout.logprobs, atol=1e-5)
    (-(recomputed * rollout.mask).sum()).backward()
    vision = [p for n, p in policy.model.named_parameters() if "visual" in n or "vision_tower" in n]
    assert vision and any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision)


@pytest.fixture(scope="module")
def text_lm_dirs(tiny_model_dir, tmp_path_factory):
    """Text-only causal LMs on the tiny model's tokenizer: rotary (Qwen2) and absolute positions (GPT-2)."""
    from transformers import AutoProcessor, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tokenizer = processor.tokenizer
    tokenizer.chat_template = tokenizer.chat_template or processor.chat_template
    torch.manual_seed(0)
    qwen2 = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1)
    models = {"qwen2": Qwen2ForCausalLM(qwen2),
              "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=2))}
    dirs = {}
    for name, model in models.items():
        dirs[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
        config_file = dirs[name] / "tokenizer_config.json"  # a text LM: AutoProcessor gives its tokenizer
        config = json.loads(config_file.read_text())
        config.pop("processor_class", None)
        config_file.write_text(json.dumps(config))
    return dirs


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2", "gpt2", "qwen2_eager"])
def test_text_prompts_of_different_lengths_rescore_exactly(family, tiny_model_dir, text_lm_dirs):
    """Left-padded text prompts (the multimodal-RoPE model without images, a rotary LM, an LM with
    absolute position embeddings; SDPA, given the boolean padding mask, and eager attention, given
    the 2-D one): the decode loop's positions and masks match a teacher-forced forward."""
    from mmpost.adapters.decoding import takes_boolean_mask

    torch.manual_seed(0)
    path = tiny_model_dir if family == "qwen2_vl" else text_lm_dirs[family.removesuffix("_eager")]
    policy = TokenPolicy.from_pretrained(path, max_new_tokens=6)
    if family.endswith("eager"):
        policy.model.set_attn_implementation("eager")
    assert takes_boolean_mask(policy.model.config) == (not family.endswith("eager"))
    policy.suppress_ids.append(policy.eos_id)
    rows = [{"prompt": [{"role": "user", "content": text}], "seed": i}
            for i, text in enumerate(["1+1=", "a much longer question about 12 + 30 and what it makes"])]
    rollout = policy.rollout(rows, n=3, temperature=1.0)
    assert rollout.mask.shape == (6, 6)
    assert torch.allclose(policy.logprobs(rollout).detach(), rollout.logprobs, atol=1e-5)
    greedy = policy.rollout(rows, n=2, greedy=True)
    ids = greedy.actions.completion_ids
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[2], ids[3])  # greedy copies of a prompt agree


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_group_media_encoded_once_give_the_same_logprobs_and_gradients(family, request):
    """Scoring a shuffled GRPO batch with each distinct prompt's images/videos through the vision
    tower once equals scoring every row separately: log-probs and every parameter's gradient."""
    from mmpost.adapters.shared_media import can_share, distinct_rows

    torch.manual_seed(0)
    policy = TokenPolicy.from_pretrained(request.getfixturevalue(FAMILY_MODELS[family]), max_new_tokens=4)
    rows = _video_rows() if family.endswith("video") else _two_image_rows()
    rollout = policy.rollout(rows, n=3, temperature=1.0).subset(torch.randperm(6))
    distinct, index = distinct_rows(rollout.actions.prompt_rows)
    assert len(distinct) == 2 and sorted(index) == [0, 0, 0, 1, 1, 1]
    assert can_share(policy.model, policy.encode_prompts(distinct))
    results = []
    for shared in (True, False):
        policy.shares_media = shared
        logprobs = policy.logprobs(rollout)
        (-(logprobs * rollout.mask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
        policy.model.zero_grad(set_to_none=True)
        results.append((logprobs.detach(), grads))
    (shared_lp, shared_grads), (row_lp, row_grads) = results
    torch.testing.assert_close(shared_lp, row_lp, atol=1e-5, rtol=0)
    assert shared_grads.keys() == row_grads.keys()
    assert any("visual" in n or "vision_tower" in n for n in shared_grads)
    for name in shared_grads:
        torch.testing.assert_close(shared_grads[name], row_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_demo_prompt_attention_is_the_last_layers_attention_on_the_prompt():
    """The semantic half read from a real tiny model: eager attention of the last layer, heads
    averaged, summed over the prompt's key positions (recomputed here from ``output_attentions``)."""
    from mmpost.tasks.arithmetic import Arithmetic

    policy = Arithmetic(Arithmetic.default_config()).policy()
    rows = Arithmetic(Arithmetic.default_config()).rows("heldout")[:2]
    scores = policy.demo_prompt_attention(rows)
    ids, _ = policy.demo_tokens(rows)
    policy.model.set_attn_implementation("eager")
    with torch.no_grad():
        last = policy._forward(rows, ids, output_attentions=True).attentions[-1].mean(1)
    policy.model.set_attn_implementation("sdpa")
    width = last.shape[-1] - ids.shape[1]
    assert scores.shape == ids.shape
    assert torch.allclose(scores, last[:, width:, :width].sum(-1))
    assert ((scores > 0) & (scores <= 1 + 1e-5)).all()  # a share of one softmax row
    assert policy.model.config._attn_implementation == "sdpa"  # restored after the eager forward


def test_ift_mixing_zero_is_plain_teacher_forcing(tiny_model_dir, chart_reward):
    from mmpost.adapters.token_policy import TokenPolicy
    from mmpost.config import DataConfig, TrainConfig
    from mmpost.tasks.chart2code import Chart2Code

    rows = Chart2Code(TrainConfig(data=DataConfig(train_size=4, eval_size=2)), reward=chart_reward).rows("train")[:2]
    policy = TokenPolicy.from_pretrained(tiny_model_dir)
    plain, mask = policy.demo_logprobs(rows)
    mixed, _ = policy.ift_demo_logprobs(rows, lam=0.0)
    assert torch.allclose(plain, mixed, atol=1e-5)  # and an image prompt goes through the embedding path
    assert not torch.allclose(plain, policy.ift_demo_logprobs(rows, lam=0.5)[0], atol=1e-3)


@pytest.fixture(scope="module")
def eos_padded_policy(mmpost_home, tmp_path_factory):
    """The arithmetic model with its tokenizer padding with its EOS (as base Qwen2.5 tokenizers and
    every LM composed without a pad token do)."""
    import shutil

    from transformers import AutoProcessor

    from mmpost.adapters.token_policy import TokenPolicy
    from mmpost.tasks.arithmetic import Arithmetic

    task = Arithmetic(Arithmetic.default_config())
    path = tmp_path_factory.mktemp("eos-pad") / "model"
    shutil.copytree(task.model_path(), path)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.pad_token = processor.tokenizer.eos_token
    processor.save_pretrained(path)
    policy = TokenPolicy.from_pretrained(path, max_new_tokens=8)
    assert policy.pad_id == policy.eos_id
    return policy, task.rows("heldout")[:3]


def test_demonstrations_train_their_eos_when_the_tokenizer_pads_with_it(eos_padded_policy):
    """Every demonstration path masks by length: the EOS after each demonstration keeps its loss (SFT
    and its token-weighted variants, IFT, FAIT, OTR and ssToken read ``demo_logprobs`` / ``demo_tokens``;
    LUFFY's group member, SPIN's chosen side and preference pairs from columns read ``demo_rollout``)."""
    policy, rows = eos_padded_policy
    texts = [policy.tokenizer(r["completion"], add_special_tokens=False)["input_ids"] for r in rows]
    lengths = torch.tensor([len(t) + 1 for t in texts], dtype=torch.float32)  # + the EOS
    ids, mask = policy.demo_tokens(rows)
    assert torch.equal(mask.sum(1), lengths)
    assert all(ids[i, len(t)] == policy.eos_id for i, t in enumerate(texts))
    assert torch.equal(policy.demo_logprobs(rows)[1].sum(1).cpu(), lengths)
    assert torch.equal(policy.demo_rollout(rows).mask.sum(1), lengths)
    assert torch.equal(policy.ift_demo_logprobs(rows)[1].sum(1).cpu(), lengths)
    assert torch.equal(policy.demo_hidden_states(rows)[3].sum(1).float().cpu(), lengths)
    eos_logprob = policy.demo_logprobs(rows)[0][0, len(texts[0])]
    assert eos_logprob < 0  # a real log-prob in the loss, not masked to 0
    _, metrics = policy.sft_loss(rows)
    assert metrics["tokens"] == float(lengths.sum())


def test_sampled_eos_then_padding_with_the_same_id_is_masked_after_the_first_eos(eos_padded_policy):
    policy, _ = eos_padded_policy
    e = policy.eos_id
    ids = torch.tensor([[5, 6, e, e, e], [5, e, e, e, e], [5, 6, 7, 8, 9]])
    assert policy._completion_mask(ids).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_token_lines_follow_the_newlines_of_the_text(eos_padded_policy):
    """FAIT's line index: each token is on the line of the text before it; a token with a newline ends
    its line."""
    policy, rows = eos_padded_policy
    ids, mask = policy.demo_tokens(rows)
    lines = policy.token_lines(ids)
    for i, row in enumerate(rows):
        real = ids[i][mask[i].bool()]
        for line in range(int(lines[i][mask[i].bool()].max()) + 1):
            text = policy.tokenizer.decode(real[lines[i][mask[i].bool()] == line], skip_special_tokens=True)
            assert text.strip("\n") == row["completion"].split("\n")[line].strip("\n")


def _demo_rows(family: str) -> list[dict]:
    """Demonstrations of different lengths (so the padded batch has padding to drop)."""
    if family in ("qwen2", "gpt2"):
        return [{"prompt": [{"role": "user", "content": q}], "completion": a}
                for q, a in [("1+1=", "2"), ("a much longer question about 12 + 30", "it makes 42, since 12 + 30 = 42")]]
    rows = _video_rows() if family.endswith("video") else _two_image_rows()
    for row, completion in zip(rows, ["left", "the second one, it is a much longer answer"]):
        row["completion"] = completion
    return rows


@pytest.mark.parametrize("family", [*FAMILY_MODELS, "qwen2", "gpt2"])
def test_padding_free_forwards_equal_the_padded_ones(family, request, text_lm_dirs):
    """padding_free (the batch's rows packed into one sequence): demonstration log-probs, rollout
    scores (a GRPO group's shared media included) and every gradient equal the padded forward's."""
    path = text_lm_dirs[family] if family in text_lm_dirs else request.getfixturevalue(FAMILY_MODELS[family])
    rows = _demo_rows(family)
    torch.manual_seed(0)
    rollout = TokenPolicy.from_pretrained(path, max_new_tokens=5).rollout(rows, n=2, temperature=1.0)
    results = []
    for padding_free in (False, True):
        policy = TokenPolicy.from_pretrained(path, padding_free=padding_free)
        demo, mask = policy.demo_logprobs(rows)
        scores = policy.logprobs(rollout)
        (-(demo.sum() + scores.sum())).backward()
        assert policy.packing_checked == padding_free
        results.append((demo.detach(), scores.detach(), {n: p.grad for n, p in policy.model.named_parameters()
                                                         if p.grad is not None}))
    (demo, scores, grads), (packed_demo, packed_scores, packed_grads) = results
    assert mask.sum() < mask.numel()  # there was padding to drop
    torch.testing.assert_close(packed_demo, demo, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed_scores, scores, atol=1e-5, rtol=0)
    assert packed_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_padding_free_refuses_a_model_whose_packed_rows_attend_to_each_other(tiny_model_dir, monkeypatch):
    """The first packed forward is checked against the padded one: packed rows that are not kept apart
    (here: position ids that never restart, so the mask lets each row see the rows before it) are refused."""
    import mmpost.adapters.token_policy as token_policy

    real_pack = token_policy.pack

    def rows_not_kept_apart(inputs, positions, keep):
        packed, window = real_pack(inputs, positions, keep)
        packed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["position_ids"])
        return packed, window

    monkeypatch.setattr(token_policy, "pack", rows_not_kept_apart)
    policy = TokenPolicy.from_pretrained(tiny_model_dir, padding_free=True)
    with pytest.raises(ValueError, match="padding_free.*differs from its padded one"):
        policy.demo_logprobs(_demo_rows("qwen2_vl"))


def test_attn_implementation_is_loaded_and_packs_with_eager_attention(tiny_model_dir):
    """`attn_implementation` reaches the loaded model (eager here; flash_attention_2 needs a GPU), and
    padding-free eager attention scores demonstrations as the default padded SDPA forward does; a
    typo fails in the config."""
    import mmpost

    rows = _demo_rows("qwen2_vl")
    default = TokenPolicy.from_pretrained(tiny_model_dir).demo_logprobs(rows)[0].detach()
    cfg = mmpost.build_config("chart2code", model=str(tiny_model_dir),
                              overrides={"attn_implementation": "eager", "padding_free": True})
    policy = TokenPolicy.for_run(tiny_model_dir, cfg)
    assert policy.model.config._attn_implementation == "eager" and policy.padding_free
    torch.testing.assert_close(policy.demo_logprobs(rows)[0].detach(), default, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="attn_implementation"):
        mmpost.build_config("chart2code", overrides={"attn_implementation": "flash"})


def test_a_rollouts_training_forward_reuses_the_sampling_pass_encoding(tiny_model_dir, rows):
    """The processor runs once per GRPO step: scoring a rollout takes the prompts the sampling pass
    encoded (same row objects), with the same scores as encoding them again; other rows are encoded."""
    torch.manual_seed(0)
    policy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=4)
    calls = []
    encode = policy._encode_prompts
    policy._encode_prompts = lambda batch: calls.append(len(batch)) or encode(batch)
    rollout = policy.rollout(rows[:2], n=3)
    reused = policy.logprobs(rollout)
    assert calls == [2]  # the sampling pass only
    policy._last_encoding = None
    torch.testing.assert_close(reused, policy.logprobs(rollout), atol=0, rtol=0)
    assert calls == [2, 2]
    policy.demo_logprobs(rows[1:])
    assert calls == [2, 2, 2]  # other rows: encoded
