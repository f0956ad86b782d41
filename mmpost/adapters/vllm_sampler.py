"""The optional vLLM rollout backend of :class:`~mmpost.adapters.token_policy.TokenPolicy`
(``--set rollout.backend=vllm``, extra ``[vllm]``, a CUDA GPU).

vLLM runs in the training process on the training GPU, as TRL's "colocate" mode does
(``trl/generation/vllm_generation.py``): every process of a data-parallel (or sharded) run has its own
engine, or one engine per group of ``rollout.tensor_parallel_size`` processes, which then sample their
rows together. An engine loads the checkpoint once, and before every rollout it is sent the training
model's current weights through vLLM's own ``load_weights`` (LoRA adapters merged for the copy, then
unmerged; a sharded model's gathered one tensor at a time), so samples always come from the policy
being trained. vLLM only picks
the tokens: their log-probs are recomputed by the training model, so the policy-gradient ratio never
mixes two implementations' numerics. The gap between vLLM's and the trainer's log-prob of each sampled
token is logged (``rollout/vllm_logprob_gap``); it stays near 0 when the weights are in sync.
"""

from __future__ import annotations

import gc
import os

import torch

from mmpost.adapters.hf import unwrap
from mmpost.sharding import full

INSTALL_HINT = ("rollout.backend=vllm needs vLLM on a CUDA GPU: pip install 'mmpost[vllm]' (or the vLLM release "
                "built for your torch), or use rollout.backend=hf")


def import_vllm():
    """The ``vllm`` module, or an ImportError telling the user which extra to install."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return vllm


def vllm_parameter_names(model: torch.nn.Module):
    """``(name, tensor)`` of the model's weights under the checkpoint's names, as vLLM's ``load_weights``
    expects: wrapper prefixes and PEFT's names removed, LoRA factors and our value head skipped (call
    with adapters merged)."""
    peft = hasattr(model, "merge_adapter")
    for name, param in model.named_parameters():
        if peft:
            if ".lora_" in name or "original_module" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            name = name.replace("modules_to_save.default.", "")
        name = name.replace("_checkpoint_wrapped_module.", "")
        if name.startswith("value_head."):
            continue
        yield name, param.data


def engine_weights(model: torch.nn.Module):
    """``(name, full tensor)`` of the training model's current weights for a vLLM engine, one at a time:
    LoRA adapters merged while they are read (then unmerged), a sharded model's tensors gathered (every
    process must iterate, in step)."""
    network = unwrap(model)
    peft = hasattr(network, "merge_adapter")
    if peft:
        network.merge_adapter()  # (also on FSDP2 shards: the adapters' DTensors merge shard by shard)
    try:
        for name, tensor in vllm_parameter_names(network):
            yield name, full(tensor)
    finally:
        if peft:
            network.unmerge_adapter()


def vllm_media(row: dict) -> dict:
    """A row's media as vLLM's ``multi_modal_data``."""
    media = {}
    if row.get("images"):
        media["image"] = list(row["images"])
    if row.get("videos"):
        media["video"] = list(row["videos"])
    if row.get("audios"):
        rate = row.get("audio_sampling_rate", 16000)
        media["audio"] = [(wave, rate) for wave in row["audios"]]
    return media


class VLLMSampler:
    """The vLLM engine of one process (or of one tensor-parallel group of processes) for a
    :class:`TokenPolicy`.

    Args:
        model_path: the checkpoint the policy was loaded from (vLLM loads its config, tokenizer and,
            once, its weights; the trained weights replace them before every rollout).
        config: the run's :class:`~mmpost.config.RolloutConfig` (``tensor_parallel_size``: processes
            per engine; it must divide the number of processes).
        seed: the run's seed; the engine of group ``g`` is seeded ``seed + g`` (each rollout also draws a
            request seed from torch's RNG, so a resumed run samples as the uninterrupted one would).
        llm, sampling_params: an engine and its ``SamplingParams`` class to use instead of starting vLLM
            (tests stand in for vLLM, which needs a CUDA GPU, with them).
    """

    def __init__(self, model_path: str, config, *, seed: int = 0, llm=None, sampling_params=None):
        from mmpost.distributed import world

        rank, size = world()
        tp = config.tensor_parallel_size
        if size % tp:
            raise ValueError(f"rollout.tensor_parallel_size={tp} must divide the number of processes ({size})")
        # the processes of one engine sample together (vLLM's tensor parallelism needs the same requests on each)
        self.group = _tensor_parallel_group(size, tp)
        if llm is None:
            llm, sampling_params = _start_engine(model_path, config, seed + rank // tp)
        self.llm, self.SamplingParams = llm, sampling_params

    @torch.no_grad()
    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s current weights into the engine, one tensor at a time (a sharded model's are
        gathered as they go: the full model is never held twice)."""
        # vLLM maps checkpoint names to its own layout (and takes its tensor-parallel slice)
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(engine_weights(model)))
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights

    def generate(self, rows: list[dict], prompts: list[str], n: int, *, temperature: float, greedy: bool,
                 max_new_tokens: int, eos_id: int, suppress_ids: list[int]):
        """``n`` completions per row: ``(token id lists, vLLM's log-prob lists)``, row-major (row 0's
        ``n`` outputs first), each ending at EOS (included) or at ``max_new_tokens``."""
        requests = []
        for row, text in zip(rows, prompts):
            request = {"prompt": text}
            media = vllm_media(row)
            if media:
                request["multi_modal_data"] = media
            requests.append(request)
        seed, mine = int(torch.randint(2**31 - 1, ())), slice(0, len(requests))
        if self.group is not None:  # the group's requests, in rank order, with its first process's seed
            everyone = [None] * torch.distributed.get_world_size(self.group)
            torch.distributed.all_gather_object(everyone, (requests, seed), group=self.group)
            start = sum(len(theirs) for theirs, _ in everyone[:torch.distributed.get_rank(self.group)])
            requests, seed, mine = [r for theirs, _ in everyone for r in theirs], everyone[0][1], \
                slice(start, start + len(requests))
        params = self.SamplingParams(
            n=n, temperature=0.0 if greedy else temperature, top_p=1.0, top_k=0, max_tokens=max_new_tokens,
            stop_token_ids=[eos_id], logprobs=0, seed=seed,
            # vLLM clamps biases to [-100, 100]: e^-100 is 0 in practice (the recomputed log-probs mask exactly)
            logit_bias={i: -100.0 for i in suppress_ids} or None)
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)[mine]
        ids, logprobs = [], []
        for output in outputs:
            for sample in output.outputs:
                ids.append(list(sample.token_ids))
                logprobs.append([step[token].logprob for step, token in zip(sample.logprobs or [], sample.token_ids)])
        return ids, logprobs

    def close(self) -> None:
        """Shut the engine down and free its GPU memory (and vLLM's one-process group, so another
        engine can start in this process)."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm = None
        gc.collect()
        cleanup_dist_env_and_memory()


def _tensor_parallel_group(size: int, tp: int):
    """This process's group of ``tp`` consecutive ranks (collective: every process creates all groups);
    ``None`` when each process has an engine of its own."""
    if tp == 1:
        return None
    group, _ = torch.distributed.new_subgroups_by_enumeration(
        [list(range(first, first + tp)) for first in range(0, size, tp)])
    return group


def _start_engine(model_path: str, config, seed: int):
    """vLLM's in-process engine on this process's GPU (TRL's colocate mode): its worker is this process,
    so weights move by reference, never pickled; ``external_launcher`` takes the ranks of the launch
    (``accelerate launch`` / torchrun set them), or a group of one for a plain process."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"{INSTALL_HINT}: no CUDA GPU is visible")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # a plain process: the variables are set only while the engine starts, so that no child process
    # (sandbox workers, a nested launcher) mistakes itself for a distributed rank
    launcher = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    added = [key for key in launcher if key not in os.environ]
    os.environ.update({key: launcher[key] for key in added})
    try:
        vllm = import_vllm()
        options = dict(model=str(model_path), dtype=config.dtype, tensor_parallel_size=config.tensor_parallel_size,
                       gpu_memory_utilization=config.gpu_memory_utilization, seed=seed,
                       enforce_eager=config.enforce_eager, distributed_executor_backend="external_launcher",
                       logprobs_mode="processed_logprobs")  # log-probs after temperature, as the trainer's
        if config.max_model_len:
            options["max_model_len"] = config.max_model_len
        return vllm.LLM(**options), vllm.SamplingParams
    finally:
        for key in added:
            os.environ.pop(key, None)


def check_server_prompts(rows: list[dict]) -> list[dict]:
    """The rows' media for a vLLM server; an error for video or audio, which TRL's client cannot send."""
    media = [vllm_media(row) for row in rows]
    if any("video" in m or "audio" in m for m in media):
        raise NotImplementedError("rollout.backend=vllm_server sends text and images (TRL's client has no video or "
                                  "audio); use rollout.backend=vllm or hf for prompts with video or audio")
    return media


class VLLMServerSampler:
    """``rollout.backend=vllm_server``: a vLLM server on GPUs of its own, started with TRL's
    ``trl vllm-serve --model PATH`` (the checkpoint the policy starts from), reached through TRL's
    ``VLLMClient`` (``trl/generation/vllm_client.py``). Before every rollout the main process sends the
    current weights over NCCL (``update_named_param``; a sharded model's are gathered first, by every
    process); every process then samples its own rows over HTTP. As with the colocated engine, the
    trainer recomputes the log-probs.

    Prompts with images go as token ids (``prompt_ids``: the policy's processor output, image
    placeholders expanded) with the images the server processed first (``image_features``), as TRL's
    client wants them; video and audio prompts are refused (the client sends neither)."""

    def __init__(self, config, *, seed: int = 0, client=None, prompt_ids=None):
        from mmpost.distributed import world

        self.main = world()[0] == 0
        self.seed = seed
        self.prompt_ids = prompt_ids
        if client is None:
            try:
                from trl.generation.vllm_client import VLLMClient
            except ImportError as error:
                raise ImportError("rollout.backend=vllm_server talks to `trl vllm-serve` through TRL's client: "
                                  f"pip install trl ({error})") from error
            client = VLLMClient(base_url=config.server_url, connection_timeout=config.server_timeout)
            if self.main:
                client.init_communicator(device=torch.cuda.current_device() if torch.cuda.is_available() else "cpu")
        self.client = client

    @torch.no_grad()
    def load_weights(self, model: torch.nn.Module) -> None:
        """Send ``model``'s current weights to the server (LoRA adapters merged for the copy); the other
        processes wait until it has them."""
        for name, tensor in engine_weights(model):
            if self.main:
                self.client.update_named_param(name, tensor)
        if self.main:
            self.client.reset_prefix_cache()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # nobody samples from the old weights

    def generate(self, rows: list[dict], prompts: list[str], n: int, *, temperature: float, greedy: bool,
                 max_new_tokens: int, eos_id: int, suppress_ids: list[int]):
        """As :meth:`VLLMSampler.generate`, from the server."""
        media = check_server_prompts(rows)
        images = {}
        if any(media):  # the server takes images or token ids in a request, never both: images first
            if self.prompt_ids is None:
                raise ValueError("rollout.backend=vllm_server: prompts with images need the policy's prompt_ids")
            images = {"features": self.client.image_features([m.get("image") for m in media])}
            prompts = self.prompt_ids(rows)
        extra = {"stop_token_ids": [eos_id], "seed": int(torch.randint(2**31 - 1, ()))}
        if suppress_ids:
            extra["logit_bias"] = {str(i): -100.0 for i in suppress_ids}
        out = self.client.generate(prompts, n=n, temperature=0.0 if greedy else temperature, top_p=1.0, top_k=0,
                                   max_tokens=max_new_tokens, logprobs=0, generation_kwargs=extra, **images)
        ids = [list(sample) for sample in out["completion_ids"]]
        logprobs = [[step[0] for step in sample] for sample in out["logprobs"]]  # the sampled token's (first)
        return ids, logprobs

    def close(self) -> None:
        if self.main:
            self.client.close_communicator()
