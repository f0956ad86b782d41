"""The vLLM rollout backend's parts that run without a GPU: config, the missing-extra message, the
weight names sent to vLLM (LoRA merged), and how a rollout is assembled from the engine's output.
vLLM itself needs a CUDA GPU: scripts/gpu_check_vllm.py runs it there."""

import importlib.util

import pytest
import torch

import mmpost
from mmpost.adapters.lora import add_lora
from mmpost.adapters.token_policy import TokenPolicy
from mmpost.adapters.vllm_sampler import import_vllm, vllm_media, vllm_parameter_names
from mmpost.config import PeftConfig, RolloutConfig, TrainConfig, apply_overrides

ROWS = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "completion": "2 + 3 = 5", "answer": "5"},
        {"prompt": [{"role": "user", "content": "What is 7 - 4?"}], "completion": "7 - 4 = 3", "answer": "3"}]


def test_rollout_config_is_checked():
    cfg = apply_overrides(TrainConfig(), {"rollout.backend": "vllm", "rollout.gpu_memory_utilization": "0.5"})
    assert cfg.rollout.backend == "vllm" and cfg.rollout.gpu_memory_utilization == 0.5
    with pytest.raises(ValueError, match="rollout.backend must be one of"):
        RolloutConfig(backend="vlm")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        RolloutConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="rollout.dtype"):
        RolloutConfig(dtype="bf16")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_names_the_extra():
    with pytest.raises(ImportError, match=r"mmpost\[vllm\]"):
        import_vllm()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_train_with_vllm_backend_without_gpu_fails_before_training(mmpost_home, tmp_path):
    cfg = mmpost.build_config("arithmetic", max_steps=1, output_dir=str(tmp_path / "run"),
                              overrides={"rollout.backend": "vllm", "trackers": []})
    from mmpost.engine import train

    with pytest.raises((RuntimeError, ImportError), match="rollout.backend=vllm"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_weights_sent_to_vllm_are_the_merged_checkpoint_names(tiny_model_dir):
    base = TokenPolicy.from_pretrained(tiny_model_dir)
    expected = dict(base.model.named_parameters())
    policy = TokenPolicy.from_pretrained(tiny_model_dir)
    add_lora(policy, PeftConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, parameter in policy.model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # adapters that change the model
    policy.model.merge_adapter()
    sent = dict(vllm_parameter_names(policy.model))
    merged = {name: tensor.clone() for name, tensor in sent.items()}
    policy.model.unmerge_adapter()
    assert set(sent) == set(expected)  # the checkpoint's names: no PEFT prefixes, no LoRA factors
    changed = [n for n in merged if not torch.equal(merged[n], expected[n].data)]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)
    # the merged weight is W + B A * alpha / r, what merge_and_unload gives
    reference = policy.model.merge_and_unload()
    for name, tensor in reference.named_parameters():
        torch.testing.assert_close(merged[name], tensor.data)


def test_media_become_multi_modal_data():
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    wave = torch.zeros(160).numpy()
    media = vllm_media({"images": [image], "audios": [wave], "audio_sampling_rate": 8000})
    assert media["image"] == [image] and media["audio"][0][1] == 8000 and "video" not in media
    assert vllm_media({"prompt": []}) == {}


class GenerateSampler:
    """Stands in for the vLLM engine (which needs a CUDA GPU): the same output lists vLLM returns
    (each completion ending at EOS or the length cap, the sampled tokens' log-probs), produced by the
    policy's own decode loop."""

    def __init__(self, policy):
        self.policy, self.loads = policy, 0

    def load_weights(self, model):
        self.loads += 1

    def generate(self, rows, prompts, n, *, temperature, greedy, max_new_tokens, eos_id, suppress_ids):
        ids, logprobs, _ = self.policy._generate(rows, n, temperature, greedy)
        mask = self.policy._completion_mask(ids).bool()
        return ([row[m].tolist() for row, m in zip(ids, mask)], [row[m].tolist() for row, m in zip(logprobs, mask)])


@pytest.mark.parametrize("greedy", [True, False])
def test_rollout_from_engine_output_matches_generate(tiny_model_dir, greedy):
    policy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=10)
    torch.manual_seed(1)
    expected = policy.rollout(ROWS, 3, temperature=0.8, greedy=greedy)
    policy.sampler = GenerateSampler(policy)
    torch.manual_seed(1)
    rollout = policy.rollout(ROWS, 3, temperature=0.8, greedy=greedy)
    assert policy.sampler.loads == 1  # weights sent before the rollout
    assert torch.equal(rollout.actions.completion_ids, expected.actions.completion_ids)
    assert torch.equal(rollout.mask, expected.mask) and torch.equal(rollout.truncated, expected.truncated)
    torch.testing.assert_close(rollout.logprobs, expected.logprobs, atol=1e-5, rtol=0)  # recomputed by the trainer
    assert rollout.outputs == expected.outputs and rollout.temperature == expected.temperature
    assert rollout.metrics["rollout/vllm_logprob_gap"] < 1e-5


class ServerStandIn:
    """Stands in for ``trl vllm-serve`` behind TRL's ``VLLMClient`` (vLLM needs a CUDA GPU): it holds its
    own copy of the policy, takes weights by name as the server does, and answers ``generate`` in the
    client's format (completion ids; per token a list whose first entry is the sampled token's log-prob)
    from that copy's decode loop."""

    def __init__(self, tiny_model_dir, rows):
        self.copy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=10)
        self.received, self.resets = {}, 0
        self.rows = {self.copy._prompt_text(row): row for row in rows}  # the server gets the prompts' text

    def update_named_param(self, name, weights):
        self.received[name] = weights.clone()
        dict(self.copy.model.named_parameters())[name].data.copy_(weights)

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, n, temperature, top_p, top_k, max_tokens, logprobs, generation_kwargs):
        assert (top_p, top_k, logprobs) == (1.0, 0, 0) and generation_kwargs["stop_token_ids"] == [self.copy.eos_id]
        greedy = temperature == 0.0
        ids, lps, _ = self.copy._generate([self.rows[text] for text in prompts], n, temperature or 1.0, greedy)
        mask = self.copy._completion_mask(ids).bool()
        return {"completion_ids": [row[m].tolist() for row, m in zip(ids, mask)],
                "logprobs": [[[v] for v in row[m].tolist()] for row, m in zip(lps, mask)]}


def test_server_mode_sends_the_trained_weights_and_assembles_the_rollout(tiny_model_dir):
    from mmpost.adapters.vllm_sampler import VLLMServerSampler

    policy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=10)
    with torch.no_grad():
        for parameter in policy.model.parameters():  # trained weights the server does not have yet
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.manual_seed(1)
    expected = policy.rollout(ROWS, 3, temperature=0.8)
    server = ServerStandIn(tiny_model_dir, ROWS)
    policy.sampler = VLLMServerSampler(RolloutConfig(backend="vllm_server"), client=server)
    torch.manual_seed(1)
    rollout = policy.rollout(ROWS, 3, temperature=0.8)
    assert set(server.received) == dict(policy.model.named_parameters()).keys() and server.resets == 1
    assert all(torch.equal(server.received[n], p.data) for n, p in policy.model.named_parameters())
    # the server drew its own samples (its seed comes from torch's stream): the trainer scores them again
    assert rollout.actions.completion_ids.shape[0] == expected.actions.completion_ids.shape[0] == 6
    assert rollout.metrics["rollout/vllm_logprob_gap"] < 1e-5  # the server sampled from the trained weights
    stale = ServerStandIn(tiny_model_dir, ROWS)  # a server that never received them: the gap shows it
    policy.sampler = VLLMServerSampler(RolloutConfig(backend="vllm_server"), client=stale)
    policy.sampler.load_weights = lambda model: None
    assert policy.rollout(ROWS, 3, temperature=0.8).metrics["rollout/vllm_logprob_gap"] > 0.1


def test_server_mode_refuses_media_prompts_with_a_message():
    from PIL import Image

    from mmpost.adapters.vllm_sampler import VLLMServerSampler

    sampler = VLLMServerSampler(RolloutConfig(backend="vllm_server"), client=object())
    with pytest.raises(NotImplementedError, match="text prompts"):
        sampler.generate([{"images": [Image.new("RGB", (8, 8))]}], ["x"], 1, temperature=1.0, greedy=False,
                         max_new_tokens=4, eos_id=0, suppress_ids=[])
