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
    from that copy's decode loop. As the client's contract has it, prompts with images arrive as token ids
    beside the features ``image_features`` returned for their images, text prompts as text."""

    def __init__(self, tiny_model_dir, rows):
        self.copy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=10)
        self.received, self.resets, self.rendered = {}, 0, []
        self.rows = {self.copy._prompt_text(row): row for row in rows}
        self.rows.update({tuple(ids): row for ids, row in zip(self.copy.prompt_ids(rows), rows)})

    def update_named_param(self, name, weights):
        self.received[name] = weights.clone()
        dict(self.copy.model.named_parameters())[name].data.copy_(weights)

    def reset_prefix_cache(self):
        self.resets += 1

    def image_features(self, images):
        self.rendered.extend(images)
        return [None if not each else {"images": len(each)} for each in images]

    def generate(self, prompts, n, temperature, top_p, top_k, max_tokens, logprobs, generation_kwargs, features=None):
        assert (top_p, top_k, logprobs) == (1.0, 0, 0) and generation_kwargs["stop_token_ids"] == [self.copy.eos_id]
        if features is not None:  # token ids, each with its images' features
            rows = [self.rows[tuple(ids)] for ids in prompts]
            assert [f and f["images"] for f in features] == [len(row.get("images", [])) or None for row in rows]
        else:
            rows = [self.rows[text] for text in prompts]
        greedy = temperature == 0.0
        ids, lps, _ = self.copy._generate(rows, n, temperature or 1.0, greedy)
        mask = self.copy._completion_mask(ids).bool()
        return {"completion_ids": [row[m].tolist() for row, m in zip(ids, mask)],
                "logprobs": [[[v] for v in row[m].tolist()] for row, m in zip(lps, mask)]}


def _image_rows():
    from PIL import Image

    from mmpost.data.charts import chart_program
    from mmpost.tasks.chart2code import make_row

    images = [Image.new("RGB", (112, 112), "red"), Image.new("RGB", (56, 84), "blue")]
    return [make_row(image, chart_program(i)["code"], seed=i) for i, image in enumerate(images)]


@pytest.mark.parametrize("media", ["text", "images"])
def test_server_mode_sends_the_trained_weights_and_assembles_the_rollout(tiny_model_dir, media):
    from mmpost.adapters.vllm_sampler import VLLMServerSampler

    rows = ROWS if media == "text" else _image_rows()
    policy = TokenPolicy.from_pretrained(tiny_model_dir, max_new_tokens=10)
    with torch.no_grad():
        for parameter in policy.model.parameters():  # trained weights the server does not have yet
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.manual_seed(1)
    expected = policy.rollout(rows, 3, temperature=0.8)
    server = ServerStandIn(tiny_model_dir, rows)
    policy.sampler = VLLMServerSampler(RolloutConfig(backend="vllm_server"), client=server,
                                       prompt_ids=policy.prompt_ids)
    torch.manual_seed(1)
    rollout = policy.rollout(rows, 3, temperature=0.8)
    assert len(server.rendered) == (0 if media == "text" else len(rows))  # each prompt's images sent once
    assert set(server.received) == dict(policy.model.named_parameters()).keys() and server.resets == 1
    assert all(torch.equal(server.received[n], p.data) for n, p in policy.model.named_parameters())
    # the server drew its own samples (its seed comes from torch's stream): the trainer scores them again
    assert rollout.actions.completion_ids.shape[0] == expected.actions.completion_ids.shape[0] == 6
    assert rollout.metrics["rollout/vllm_logprob_gap"] < 1e-5  # the server sampled from the trained weights
    stale = ServerStandIn(tiny_model_dir, rows)  # a server that never received them: the gap shows it
    policy.sampler = VLLMServerSampler(RolloutConfig(backend="vllm_server"), client=stale,
                                       prompt_ids=policy.prompt_ids)
    policy.sampler.load_weights = lambda model: None
    assert policy.rollout(rows, 3, temperature=0.8).metrics["rollout/vllm_logprob_gap"] > 0.1


def test_server_mode_on_an_audio_task_fails_before_training(mmpost_home, tmp_path):
    cfg = mmpost.build_config("audio_qa", max_steps=1, output_dir=str(tmp_path / "run"),
                              overrides={"rollout.backend": "vllm_server", "trackers": [], "data.eval_size": 2})
    from mmpost.engine import train

    with pytest.raises(NotImplementedError, match="no video or audio"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_server_mode_refuses_video_and_audio_prompts_with_a_message():
    import numpy as np

    from mmpost.adapters.vllm_sampler import VLLMServerSampler

    sampler = VLLMServerSampler(RolloutConfig(backend="vllm_server"), client=object())
    for row in ({"videos": [np.zeros((2, 8, 8, 3), np.uint8)]}, {"audios": [np.zeros(160, np.float32)]}):
        with pytest.raises(NotImplementedError, match="no video or audio"):
            sampler.generate([row], ["x"], 1, temperature=1.0, greedy=False, max_new_tokens=4, eos_id=0,
                             suppress_ids=[])


class EngineStandIn:
    """Stands in for one process's in-process vLLM engine (``vllm.LLM``, which needs a CUDA GPU): it holds
    its own copy of the policy, takes weights as vLLM's model does (``apply_model`` with a function that
    calls ``load_weights`` on (name, tensor) pairs), and answers ``generate`` with vLLM's output objects
    from that copy's decode loop, seeded by the request's seed."""

    def __init__(self, model_dir, rows):
        self.copy = TokenPolicy.from_pretrained(model_dir, max_new_tokens=10)
        self.rows = {self.copy._prompt_text(row): row for row in rows}
        self.received, self.requests, self.seeds, self.ids = {}, [], [], None

    def apply_model(self, function):
        return function(self)

    def load_weights(self, weights):
        params = dict(self.copy.model.named_parameters())
        for name, tensor in weights:
            self.received[name] = tensor.clone()
            params[name].data.copy_(tensor)

    def reset_prefix_cache(self):
        pass

    def generate(self, requests, sampling_params, use_tqdm):
        from types import SimpleNamespace

        self.requests.append([r["prompt"] for r in requests])
        self.seeds.append(sampling_params.seed)
        torch.manual_seed(sampling_params.seed)
        n = sampling_params.n
        ids, logprobs, _ = self.copy._generate([self.rows[r["prompt"]] for r in requests], n,
                                               sampling_params.temperature, sampling_params.temperature == 0.0)
        mask = self.copy._completion_mask(ids).bool()
        self.ids = [row[m].tolist() for row, m in zip(ids, mask)]
        samples = [SimpleNamespace(token_ids=tokens, logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in
                                                               zip(tokens, row[m].tolist())])
                   for tokens, row, m in zip(self.ids, logprobs, mask)]
        return [SimpleNamespace(outputs=samples[i * n:(i + 1) * n]) for i in range(len(requests))]


def _engine_per_process(rank, model_dir, port, tensor_parallel_size, lora):
    """One of two gloo processes of a sharded run sampling through its colocated engine stand-in."""
    import os
    from types import SimpleNamespace

    import torch.distributed as dist

    from mmpost.adapters.vllm_sampler import VLLMSampler
    from mmpost.sharding import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same trained weights on both processes
    policy = TokenPolicy.from_pretrained(model_dir, max_new_tokens=10)
    if lora:
        add_lora(policy, PeftConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_A" not in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    if lora:
        policy.model.merge_adapter()
    expected = {name: tensor.clone() for name, tensor in vllm_parameter_names(policy.model)}
    if lora:
        policy.model.unmerge_adapter()
    shard_model(policy.model)
    engine = EngineStandIn(model_dir, ROWS)
    policy.sampler = VLLMSampler(model_dir, RolloutConfig(backend="vllm", tensor_parallel_size=tensor_parallel_size),
                                 llm=engine, sampling_params=SimpleNamespace)
    torch.manual_seed(1 + rank)  # each process its own stream: an engine's group must still agree on one seed
    rollout = policy.rollout([ROWS[rank]], 3, temperature=0.8)

    # the engine was sent the full trained weights: gathered from the shards, adapters merged
    assert engine.received.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(engine.received[name], tensor, rtol=0, atol=1e-6, msg=name)
    texts = [engine.copy._prompt_text(row) for row in ROWS]
    seeds = [None, None]
    dist.all_gather_object(seeds, engine.seeds)
    if tensor_parallel_size == 2:  # one engine for both: both rows, in rank order, one seed
        assert engine.requests == [texts] and seeds[0] == seeds[1]
        mine = engine.ids[3 * rank:3 * rank + 3]
    else:  # an engine per process: its own row only, its own seed
        assert engine.requests == [[texts[rank]]] and seeds[0] != seeds[1]
        mine = engine.ids
    completions = rollout.actions.completion_ids
    assert [row[:len(ids)].tolist() for row, ids in zip(completions, mine)] == mine  # this process's samples
    assert rollout.prompts == [ROWS[rank]["prompt"]] * 3
    assert rollout.metrics["rollout/vllm_logprob_gap"] < 1e-5  # sampled from the trained weights
    dist.destroy_process_group()


@pytest.mark.parametrize("tensor_parallel_size,lora", [(1, True), (2, False)])
def test_colocated_engines_of_a_sharded_run(tiny_model_dir, tensor_parallel_size, lora):
    """Two processes of a sharded (FSDP2) run, each with a colocated engine (or one engine per
    tensor-parallel group of two): each engine is sent the full weights (LoRA merged) gathered from the
    shards; with an engine per process each samples its own rows, a tensor-parallel group samples all
    its processes' rows with one seed and each process keeps its own."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_engine_per_process, args=(str(tiny_model_dir), port, tensor_parallel_size, lora), nprocs=2)


def test_tensor_parallel_size_is_checked():
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        RolloutConfig(backend="hf", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        RolloutConfig(backend="vllm", tensor_parallel_size=0)
