"""``TokenPolicy``: any transformers causal LM or VLM with its processor, as a :class:`Policy`.

Rows are TRL-style: ``{"prompt": [chat messages], "images": [PIL images], "completion": str, ...}``.
The chat template of the model's processor turns the prompt into text; the processor inserts the
image tokens. An action step is one generated token; its log-prob is the softmax of the sampling
distribution (temperature-scaled logits with suppressed tokens removed), so sampled and recomputed
log-probs describe the same distribution.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mmpost.algos.kl import entropy
from mmpost.algos.sft import nll_loss
from mmpost.distributed import token_count
from mmpost.adapters.decoding import decode, positions_from_mask
from mmpost.adapters.hf import load_model, transformers_model, unwrap
from mmpost.adapters.packing import kept_positions, pack, unpack_logits
from mmpost.adapters.shared_media import can_share, distinct_rows, shared_media_inputs
from mmpost.policy import eval_mode
from mmpost.types import MEDIA_AND_TEXT, Rollout

VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


@dataclass
class TokenActions:
    """What :meth:`TokenPolicy.logprobs` needs to recompute a token rollout exactly."""

    prompt_rows: list[dict]  # one row per output
    completion_ids: torch.Tensor  # [N, T] generated tokens, padded with pad_id
    pad_id: int

    def __getitem__(self, index: torch.Tensor) -> "TokenActions":
        return TokenActions([self.prompt_rows[i] for i in index.tolist()], self.completion_ids[index], self.pad_id)

    @staticmethod
    def concat(parts: list["TokenActions"]) -> "TokenActions":
        width = max(p.completion_ids.shape[1] for p in parts)
        ids = [F.pad(p.completion_ids, (0, width - p.completion_ids.shape[1]), value=p.pad_id) for p in parts]
        return TokenActions([r for p in parts for r in p.prompt_rows], torch.cat(ids), parts[0].pad_id)


class TokenPolicy:
    """A transformers model + processor sampling and scoring token sequences.

    Args:
        model: a ``PreTrainedModel`` with a language-modelling head (VLMs included).
        processor: its processor (or tokenizer, for text-only models); must have a chat template.
        max_new_tokens: generation length cap.
        device: where the model lives.
        padding_free: teacher-forced forwards (SFT demonstrations, rollout scoring) pack the batch's
            rows into one sequence without padding (:mod:`mmpost.adapters.packing`); checked once
            against the padded forward, which it must equal.
    """

    def __init__(self, model, processor, max_new_tokens: int = 72, device: str | torch.device = "cpu",
                 padding_free: bool = False):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_new_tokens = max_new_tokens
        self.device = torch.device(device)
        vocab = self.tokenizer.get_vocab()
        # Never sample vision placeholders: a generated <|image_pad|> would break the next forward.
        placeholders = {*VISION_TOKENS,
                        *(getattr(processor, f"{kind}_token", None) for kind in ("image", "video", "audio"))}
        self.suppress_ids = sorted(vocab[t] for t in placeholders if t in vocab)
        text_config = getattr(model.config, "text_config", model.config)
        # Not every model's forward takes logits_to_keep (Qwen2-Audio's does not, and swallows it)
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.multimodal_rope = "mrope_section" in (getattr(text_config, "rope_parameters", None) or {})
        self.eos_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        self.pad_id = self.tokenizer.pad_token_id
        self.sampler = None  # a VLLMSampler after use_vllm(); None: mmpost's decode loop
        self.shares_media = True  # a group's shared prompt encoded once, until a batch shows it cannot be
        self.adapters_merged = False  # an earlier stage's LoRA adapters went into the base (lora.restart_adapters)
        self.padding_free = padding_free
        self._last_encoding = None  # (rows, their encoded prompts): see encode_prompts
        self.packing_checked = False  # the first packed forward is compared with the padded one
        if padding_free and not self.keeps_logits:
            raise ValueError(f"padding_free needs a model whose forward takes logits_to_keep; "
                             f"{type(model).__name__}'s does not: set padding_free=false")

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                        gradient_checkpointing: bool = False, quantize: str = "", attn_implementation: str = "",
                        **kwargs) -> "TokenPolicy":
        """Load model and processor with the ordinary ``from_pretrained`` path (local dir or hub id):
        any multimodal LM transformers knows (image, video or audio + text), or a text-only causal LM
        (``quantize="nf4"`` loads it 4-bit, the frozen base of QLoRA adapters)."""
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        model = load_model(path, dtype, quantize, device, attn_implementation)
        if not quantize:  # (a quantized model is placed by device_map and cannot be moved)
            model = model.to(device)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        return cls(model, processor, device=device, **kwargs)

    @classmethod
    def for_run(cls, path: str | Path, cfg, device: str = "cpu") -> "TokenPolicy":
        """:meth:`from_pretrained` with a run's loading options (``cfg``: :class:`~mmpost.config.TrainConfig`):
        gradient checkpointing, QLoRA's quantized base, padding-free forwards and the attention kernel.
        Every token task builds its policy here."""
        return cls.from_pretrained(path, device=device, quantize=cfg.peft.quantize,
                                   gradient_checkpointing=cfg.gradient_checkpointing, padding_free=cfg.padding_free,
                                   attn_implementation=cfg.attn_implementation)

    def set_generation_length(self, max_new_tokens: int) -> None:
        """Cap each sampled completion at ``max_new_tokens`` (a stage's ``sampling.max_new_tokens``)."""
        self.max_new_tokens = max_new_tokens

    def set_image_pixels(self, pixels: int) -> None:
        """Resize every image to about ``pixels`` pixels (min = max of the processor's range), e.g. to
        trade resolution for speed or to measure how cost grows with resolution."""
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None:
            raise ValueError(f"{type(self.processor).__name__} has no image processor: image_pixels needs a vision model")
        image_processor.size = {"shortest_edge": pixels, "longest_edge": pixels}
        self._last_encoding = None

    # ------------------------------------------------------------------ encoding

    def _prompt_text(self, row: dict) -> str:
        return self.processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)

    def encode_prompts(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Left-padded processor inputs (ids, mask, pixel values, audio features, ...) for the rows'
        prompts. Rows carry their media as ``images`` (PIL images), ``videos`` (frame lists or
        arrays) and ``audios`` (1-D float waveforms at ``audio_sampling_rate``, default 16 kHz).

        The last result is kept for the same row objects: a rollout's training forward encodes the
        very prompts its sampling pass did (the processor on every image again, otherwise)."""
        last = self._last_encoding
        if last is not None and len(last[0]) == len(rows) and all(a is b for a, b in zip(last[0], rows)):
            return last[1]
        encoded = self._encode_prompts(rows)
        # (inference-mode tensors could not be saved for a backward: not kept)
        self._last_encoding = None if torch.is_inference_mode_enabled() else (list(rows), encoded)
        return encoded

    def _encode_prompts(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        texts = [self._prompt_text(r) for r in rows]
        media = {}
        for key, argument in (("images", "images"), ("videos", "videos"), ("audios", "audio")):
            items = [item for r in rows for item in r.get(key, [])]
            if items:
                media[argument] = items
        if "audio" in media:
            media["sampling_rate"] = rows[0].get("audio_sampling_rate", 16000)
        if media:
            enc = self.processor(text=texts, return_tensors="pt", padding=True, **media)
        else:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        if self.tokenizer.padding_side != "left":
            raise ValueError("TokenPolicy needs a left-padding tokenizer for batched generation")
        return {k: v.to(self.device) for k, v in enc.items()}

    def prompt_ids(self, rows: list[dict]) -> list[list[int]]:
        """Each row's prompt as the processor's token ids, without padding (media placeholders expanded)."""
        encoded = self.encode_prompts(rows)
        return [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"].cpu(),
                                                                encoded["attention_mask"].cpu())]

    def _encode_rows(self, rows: list[dict]) -> dict:
        """Model inputs for ``rows`` with each distinct prompt (a group's shared one) processed once and
        its images through the vision tower once (:mod:`mmpost.adapters.shared_media`)."""
        distinct, index = distinct_rows(rows)
        if len(distinct) < len(rows) and self.shares_media:
            encoded = self.encode_prompts(distinct)
            if can_share(self.model, encoded):
                return shared_media_inputs(self.model, encoded, distinct, index)
            self.shares_media = False  # (an audio model, a wrapped one: not asked again)
        return self.encode_prompts(rows)

    def _forward(self, rows: list[dict], completion_ids: torch.Tensor, mix: tuple | None = None, **kwargs):
        """The model on each row's prompt followed by ``completion_ids`` (teacher forcing). ``mix`` =
        ``(lam, other_ids)`` feeds ``(1 - lam) E(y_t) + lam E(other_t)`` at the completion's real
        positions instead of ``E(y_t)`` (IFT's temporal residual input)."""
        prompt = self._encode_rows(rows)
        completion_ids = completion_ids.to(self.device)
        # Attend up to and including the first EOS; a pad token the model sampled mid-completion
        # is a real token (generate attended to it), only the padding after EOS is not.
        completion_mask = self._completion_mask(completion_ids).long()
        inputs = dict(prompt)
        inputs["input_ids"] = torch.cat([prompt["input_ids"], completion_ids], dim=1)
        inputs["attention_mask"] = torch.cat([prompt["attention_mask"], completion_mask], dim=1)
        if "mm_token_type_ids" in prompt:
            inputs["mm_token_type_ids"] = F.pad(prompt["mm_token_type_ids"], (0, completion_ids.shape[1]))
        keep = completion_ids.shape[1] + 1
        if mix is not None:
            lam, other = mix
            embed = self.model.get_input_embeddings()
            embeds = embed(inputs["input_ids"])
            real = completion_mask.unsqueeze(-1).to(embeds.dtype)
            blended = (1 - lam) * embeds[:, -completion_ids.shape[1]:] + lam * embed(other.to(self.device))
            completion = real * blended + (1 - real) * embeds[:, -completion_ids.shape[1]:]
            kwargs["inputs_embeds"] = torch.cat([embeds[:, :-completion_ids.shape[1]], completion], dim=1)
        elif self.padding_free and not kwargs:
            return self._packed_forward(inputs, keep)
        return self._padded_forward(inputs, keep, **kwargs)

    def _padded_forward(self, inputs: dict, keep: int, **kwargs):
        """The model on the padded batch; logits of the last ``keep`` positions."""
        if not self.multimodal_rope:
            # Number positions from the attention mask, skipping the left padding, as generate()
            # does. Rotary models give the same scores either way (a constant shift per row); a
            # model with absolute position embeddings would otherwise be scored at shifted
            # positions. Qwen2-VL-style models derive their 3-D positions from the mask themselves.
            kwargs.setdefault("position_ids", positions_from_mask(inputs["attention_mask"]))
        if self.keeps_logits:  # only the positions that predict the completion (saves a [N, L, V] tensor)
            kwargs["logits_to_keep"] = keep
        output = self.model(**inputs, use_cache=False, **kwargs)
        output.logits = output.logits[:, -keep:]
        return output

    def _packed_forward(self, inputs: dict, keep: int):
        """The model on the batch's rows packed into one sequence (:mod:`mmpost.adapters.packing`),
        logits of the last ``keep`` padded positions back in the padded layout (0 at padding). The
        first call also runs the padded forward and refuses a model whose packed scores differ (a
        family whose attention ignores packed position ids would let rows attend to each other)."""
        text = positions_from_mask(inputs["attention_mask"])
        positions = text
        if self.multimodal_rope:
            if any(key in inputs for key in ("image_grid_thw", "video_grid_thw")):
                grids = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "mm_token_type_ids") if k in inputs}
                rope = transformers_model(self.model).base_model.get_rope_index(
                    inputs["input_ids"], attention_mask=inputs["attention_mask"], **grids)[0]
            else:
                rope = text.unsqueeze(0).expand(3, -1, -1)
            positions = torch.cat([text.unsqueeze(0), rope.to(text.device)])
        packed, window = pack(inputs, positions, keep)
        output = self.model(**packed, use_cache=False, logits_to_keep=kept_positions(window))
        output.logits = unpack_logits(output.logits, window)
        if not self.packing_checked:
            with torch.no_grad():
                padded = self._padded_forward(inputs, keep).logits
            valid = window >= 0
            gap = (F.log_softmax(output.logits[valid].float(), -1) - F.log_softmax(padded[valid].float(), -1)).abs().max()
            tolerance = 1e-3 if output.logits.dtype == torch.float32 else 5e-2
            if not gap <= tolerance:
                raise ValueError(f"padding_free: {type(transformers_model(self.model)).__name__}'s packed forward differs "
                                 f"from its padded one (log-probs by up to {float(gap):.3g}): this model does not "
                                 "attend within packed rows; set padding_free=false")
            self.packing_checked = True
        return output

    def _sequence_logprobs(self, rows: list[dict], completion_ids: torch.Tensor, temperature: float,
                           return_logits: bool = False):
        """[N, T] log-probs of ``completion_ids`` after each row's prompt, teacher-forced, with grad
        (and the [N, T, V] sampling logits when ``return_logits``)."""
        completion_ids = completion_ids.to(self.device)
        logits = self._forward(rows, completion_ids).logits[:, :-1].float()
        logits = logits / temperature
        if self.suppress_ids:
            logits[..., self.suppress_ids] = float("-inf")
        logprobs = torch.gather(F.log_softmax(logits, dim=-1), 2, completion_ids.unsqueeze(-1)).squeeze(-1)
        return (logprobs, logits) if return_logits else logprobs

    def _completion_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """1.0 up to and including the first EOS (all steps when the output was truncated)."""
        is_eos = ids == self.eos_id
        after_eos = (torch.cumsum(is_eos, dim=1) - is_eos.long()) > 0
        return (~after_eos).float()

    # ------------------------------------------------------------------ Policy contract

    @torch.no_grad()
    def rollout(self, batch: list[dict], n: int, *, temperature: float = 1.0, greedy: bool = False) -> Rollout:
        """Sample ``n`` completions per row in one batched decode loop (KV cache on, each prompt
        encoded once: :mod:`mmpost.adapters.decoding`), or with the attached vLLM engine
        (:meth:`use_vllm`).

        Log-probs are kept as tokens are sampled, so no second forward pass is needed when a
        batch is optimised once (with vLLM the training model recomputes them).
        """
        rows = [row for row in batch for _ in range(n)]
        if self.sampler is not None:
            ids, logprobs, metrics = self._vllm_sample(batch, rows, n, temperature, greedy)
        else:
            ids, logprobs, metrics = self._generate(batch, n, temperature, greedy)
        mask = self._completion_mask(ids)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        columns = {k: [row[k] for row in rows] for k in batch[0] if k not in MEDIA_AND_TEXT}
        truncated = ~(ids == self.eos_id).any(dim=1)  # hit max_new_tokens before EOS (DAPO's overlong filter)
        logprobs = torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs))
        return Rollout(logprobs=logprobs.cpu(), mask=mask.cpu(), group=torch.arange(len(batch)).repeat_interleave(n),
                       outputs=texts, prompts=[row["prompt"] for row in rows], columns=columns,
                       actions=TokenActions(rows, ids.cpu(), self.pad_id), temperature=1.0 if greedy else temperature,
                       truncated=truncated.cpu(), metrics=metrics)

    def _generate(self, batch: list[dict], n: int, temperature: float, greedy: bool):
        """[len(batch) * n, T] ids (pad after EOS) and their sampling log-probs, from mmpost's decode loop."""
        with eval_mode(self.model):
            ids, logprobs = decode(unwrap(self.model), self.encode_prompts(batch), n,
                                   max_new_tokens=self.max_new_tokens, temperature=temperature, greedy=greedy,
                                   suppress_ids=self.suppress_ids, eos_id=self.eos_id, pad_id=self.pad_id,
                                   multimodal_rope=self.multimodal_rope, keeps_logits=self.keeps_logits)
        return ids.clone(), logprobs.clone(), {}  # out of inference mode: usable in a loss

    def use_vllm(self, config, *, seed: int = 0) -> None:
        """Sample with a vLLM engine from now on (``config``: :class:`~mmpost.config.RolloutConfig`):
        one in this process that loads the checkpoint this policy was loaded from (``vllm``), or a vLLM
        server (``vllm_server``); either is sent the current weights before every rollout."""
        from mmpost.adapters.vllm_sampler import VLLMSampler, VLLMServerSampler

        if config.backend == "vllm_server":
            self.sampler = VLLMServerSampler(config, seed=seed, prompt_ids=self.prompt_ids)
            return
        network = unwrap(self.model)
        path = getattr(network, "name_or_path", "") or getattr(network.config, "_name_or_path", "")
        if not path:
            raise ValueError("rollout.backend=vllm needs a policy loaded with from_pretrained (vLLM loads the same "
                             "checkpoint)")
        self.sampler = VLLMSampler(path, config, seed=seed)

    def _vllm_sample(self, batch: list[dict], rows: list[dict], n: int, temperature: float, greedy: bool):
        """vLLM's samples, padded to [N, T], with log-probs recomputed by the training model."""
        self.sampler.load_weights(self.model)
        ids, engine_logprobs = self.sampler.generate(
            batch, [self._prompt_text(r) for r in batch], n, temperature=temperature, greedy=greedy,
            max_new_tokens=self.max_new_tokens, eos_id=self.eos_id, suppress_ids=self.suppress_ids)
        width = max(1, max(len(i) for i in ids))
        padded = torch.tensor([i + [self.pad_id] * (width - len(i)) for i in ids], device=self.device)
        with eval_mode(self.model):
            logprobs = self._sequence_logprobs(rows, padded, 1.0 if greedy else temperature)
        mask = self._completion_mask(padded).bool()
        engine = torch.tensor([lp + [0.0] * (width - len(lp)) for lp in engine_logprobs], device=self.device)
        gap = torch.where(mask, (engine - logprobs).abs(), 0.0).sum() / mask.sum().clamp(min=1)
        return padded, logprobs, {"rollout/vllm_logprob_gap": float(gap)}

    @torch.no_grad()
    def prefixed_rollout(self, batch: list[dict], n: int, ratio: float, *, temperature: float = 1.0,
                         entropy_top: float = 1.0) -> Rollout:
        """Prefix-RFT's hybrids: ``n`` outputs per row, each the row's demonstration cut to its first
        ``floor(ratio * |y*|)`` tokens (at least one token left to generate) continued by sampling.

        The whole output is the action sequence (the prefix is off-policy; its log-probs are the
        current model's), so group advantages cover hybrids and on-policy samples alike. Of all the
        prefix tokens of the call only the ``entropy_top`` fraction with the highest entropy keep a loss
        (Prefix-RFT's entropy-based clipping, ranked over the micro-batch as ``ZeroYuHuang/prefix_rft``
        ``dp_actor.py``); the rest only condition the continuation.
        """
        demos, demo_mask = self.demo_tokens(batch, "completion")
        prefixes = []
        for ids, real in zip(demos, demo_mask):
            ids = ids[real.bool()]
            prefixes.append(ids[:min(int(ratio * len(ids)), len(ids) - 1)])
        rows = [row for row in batch for _ in range(n)]
        prompt = self.encode_prompts(rows)
        joined = [torch.cat([ids[mask.bool()], prefixes[i // n].to(self.device)])
                  for i, (ids, mask) in enumerate(zip(prompt["input_ids"], prompt["attention_mask"]))]
        width = max(len(j) for j in joined)
        inputs = dict(prompt)
        inputs["input_ids"] = torch.stack([F.pad(j, (width - len(j), 0), value=self.pad_id) for j in joined])
        inputs["attention_mask"] = torch.stack([F.pad(torch.ones_like(j), (width - len(j), 0)) for j in joined])
        if "mm_token_type_ids" in prompt:  # image tokens stay where they were relative to the right edge
            types = [t[m.bool()] for t, m in zip(prompt["mm_token_type_ids"], prompt["attention_mask"])]
            inputs["mm_token_type_ids"] = torch.stack([F.pad(t, (width - len(j), len(j) - len(t)))
                                                       for t, j in zip(types, joined)])
        with eval_mode(self.model):
            out = unwrap(self.model).generate(
                **inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=self.max_new_tokens,
                suppress_tokens=self.suppress_ids or None, eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        generated = out[:, width:]
        completions = [torch.cat([prefixes[i // n].to(self.device), g]) for i, g in enumerate(generated)]
        length = max(len(c) for c in completions)
        ids = torch.stack([F.pad(c, (0, length - len(c)), value=self.pad_id) for c in completions])
        mask = self._completion_mask(ids) * (torch.arange(length, device=ids.device) <
                                             torch.tensor([len(c) for c in completions], device=ids.device)[:, None])
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, self.pad_id))
        logprobs, logits = self._sequence_logprobs(rows, ids, temperature, return_logits=True)
        trained = mask.clone()
        in_prefix = torch.arange(length, device=ids.device) < torch.tensor(
            [len(prefixes[i // n]) for i in range(len(rows))], device=ids.device)[:, None]
        if entropy_top < 1 and bool(in_prefix.any()):
            where = in_prefix.nonzero()
            order = torch.argsort(entropy(logits)[in_prefix], descending=True)
            low = where[order[max(1, int(round(entropy_top * len(order)))):]]
            trained[low[:, 0], low[:, 1]] = 0.0
        truncated = ~(ids == self.eos_id).any(dim=1)
        columns = {k: [row[k] for row in rows] for k in batch[0] if k not in MEDIA_AND_TEXT}
        return Rollout(logprobs=(logprobs * trained).cpu(), mask=trained.cpu(),
                       group=torch.arange(len(batch)).repeat_interleave(n),
                       outputs=self.tokenizer.batch_decode(ids, skip_special_tokens=True),
                       prompts=[row["prompt"] for row in rows], columns=columns,
                       actions=TokenActions(rows, ids.cpu(), self.pad_id), temperature=temperature,
                       truncated=truncated.cpu(), metrics={"prefix/tokens": float(sum(len(p) for p in prefixes)) / len(batch)})

    def logprobs(self, rollout: Rollout, return_entropy: bool = False):
        """[N, T] log-probs of the rollout's tokens (with grad); with ``return_entropy`` also the [N, T]
        entropy of the sampling distribution at each step (for an entropy bonus)."""
        lp, logits = self._sequence_logprobs(rollout.actions.prompt_rows, rollout.actions.completion_ids,
                                             rollout.temperature, return_logits=True)
        mask = rollout.mask.to(lp.device)
        if not return_entropy:
            return lp * mask
        return lp * mask, entropy(logits) * mask

    def enable_value_head(self) -> None:
        """Attach a scalar value head on the last hidden state (ReFT's critic shares the trunk, as
        TRL's ``AutoModelForCausalLMWithValueHead``); zero-initialised, so values start at 0. It is a
        submodule of the model: optimised, checkpointed and saved with it."""
        network = unwrap(self.model)
        if not hasattr(network, "value_head"):
            hidden = network.config.get_text_config().hidden_size
            network.value_head = torch.nn.Linear(hidden, 1).to(self.device)
            torch.nn.init.zeros_(network.value_head.weight)
            torch.nn.init.zeros_(network.value_head.bias)

    def values(self, rollout: Rollout) -> torch.Tensor:
        """[N, T] value of the state before each generated token (with grad)."""
        network = unwrap(self.model)
        if not hasattr(network, "value_head"):
            raise ValueError("this TokenPolicy has no value head: advantage 'gae' enables it when the run starts")
        ids = rollout.actions.completion_ids.to(self.device)
        hidden = self._forward(rollout.actions.prompt_rows, ids, output_hidden_states=True).hidden_states[-1]
        states = hidden[:, -(ids.shape[1] + 1):-1]  # the positions whose logits predict each token
        return network.value_head(states.float()).squeeze(-1) * rollout.mask.to(self.device)

    def demo_tokens(self, batch: list[dict], field: str = "completion") -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, T] ids, [B, T] mask)``: each row's ``field`` text followed by EOS, right-padded. The
        mask comes from the lengths, not from ``ids != pad``: many tokenizers pad with their EOS
        (base Qwen2.5; every LM composed without a pad token), and the EOS a demonstration ends with
        is what teaches the model to stop."""
        encoded = self.tokenizer([r[field] + self.tokenizer.eos_token for r in batch],
                                 add_special_tokens=False)["input_ids"]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), width)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1.0
        return ids, mask

    def token_lines(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] the line each token of ``ids`` is on: the newlines in the text of the tokens before it."""
        newlines = {}
        for token in ids.unique().tolist():
            newlines[token] = self.tokenizer.decode([token]).count("\n")
        counts = torch.tensor([[newlines[t] for t in row] for row in ids.tolist()], dtype=torch.long).view_as(ids)
        return torch.cumsum(counts, dim=1) - counts  # a token ending a line still belongs to it

    def demo_logprobs(self, batch: list[dict], return_logits: bool = False):
        """Teacher-forced log-probs of each row's ``completion`` followed by EOS; prompt tokens excluded.
        Returns ``(logprobs, mask)``, plus the [B, T, V] logits when ``return_logits``."""
        ids, mask = self.demo_tokens(batch, "completion")
        mask = mask.to(self.device)
        logprobs, logits = self._sequence_logprobs(batch, ids, temperature=1.0, return_logits=True)
        return (logprobs * mask, mask, logits) if return_logits else (logprobs * mask, mask)

    def choice_logits(self, batch: list[dict], words: tuple[str, ...]) -> torch.Tensor:
        """[B, len(words)] logits (with grad) of each word's first token as the next token after each
        row's prompt (a reranker's "yes" / "no")."""
        ids = [self.tokenizer.encode(word, add_special_tokens=False)[:1] for word in words]
        if any(not i for i in ids) or len({i[0] for i in ids}) < len(ids):
            raise ValueError(f"choice words {words} need distinct first tokens in this tokenizer, got {ids}")
        logits = self.model(**self.encode_prompts(batch), use_cache=False).logits[:, -1]  # left-padded: last = next
        return logits[:, [i[0] for i in ids]]

    @torch.no_grad()
    def prompt_embeddings(self, batch: list[dict]) -> torch.Tensor:
        """[B, D] each prompt's mean last-layer hidden state over its real tokens (Middo's sentence
        embedding of an instruction)."""
        inputs = self.encode_prompts(batch)
        hidden = self.model(**inputs, use_cache=False, output_hidden_states=True).hidden_states[-1].float()
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    @torch.no_grad()
    def demo_hidden_states(self, batch: list[dict]):
        """``(hidden [B, T, D], logits [B, T, V], ids [B, T], mask [B, T])``: for each demonstrated
        token, the final hidden state and logits at the position that predicts it (DONOD's
        closed-form update norms)."""
        ids, mask = self.demo_tokens(batch)
        output = self._forward(batch, ids, output_hidden_states=True)
        hidden = output.hidden_states[-1][:, -(ids.shape[1] + 1):-1]
        return hidden, output.logits[:, :-1], ids, mask.bool().to(self.device)

    @torch.no_grad()
    def demo_prompt_attention(self, batch: list[dict]) -> torch.Tensor:
        """[B, T] for each demonstrated token (the ``demo_logprobs`` positions): the attention its
        position pays to the prompt (text and media tokens) in the last layer, averaged over heads
        (ssToken's semantic score). Attention weights need the eager kernel, switched on for this
        forward only."""
        ids, _ = self.demo_tokens(batch)
        network = unwrap(transformers_model(self.model))
        previous = network.config._attn_implementation
        network.set_attn_implementation("eager")
        try:
            attentions = self._forward(batch, ids, output_attentions=True).attentions
        finally:
            network.set_attn_implementation(previous)
        last = attentions[-1].float().mean(1)  # [B, S, S], heads averaged
        prompt_width = last.shape[-1] - ids.shape[1]
        return last[:, prompt_width:, :prompt_width].sum(-1)  # completion queries -> prompt keys

    def ift_demo_logprobs(self, batch: list[dict], lam: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
        """IFT (``TsinghuaC3I/Intuitive-Fine-Tuning``): the gold tokens' log-probs when each completion
        input is ``(1 - lam) E(y_t) + lam E(y_hat_t)``, ``y_hat_t`` the model's greedy prediction of
        ``y_t`` from an un-mixed pass without gradient. Returns ``(logprobs, mask)`` with grad."""
        ids, mask = self.demo_tokens(batch)
        mask = mask.to(self.device)
        with torch.no_grad():
            logits = self._forward(batch, ids).logits[:, :-1].float()
            if self.suppress_ids:
                logits[..., self.suppress_ids] = float("-inf")
            predicted = torch.where(mask.bool(), logits.argmax(-1), ids.to(self.device))
        logits = self._forward(batch, ids, mix=(lam, predicted)).logits[:, :-1].float()
        if self.suppress_ids:
            logits[..., self.suppress_ids] = float("-inf")
        logprobs = torch.gather(F.log_softmax(logits, dim=-1), 2, ids.to(self.device).unsqueeze(-1)).squeeze(-1)
        return logprobs * mask, mask

    @torch.no_grad()
    def demo_rollout(self, batch: list[dict], field: str = "completion", temperature: float = 1.0) -> Rollout:
        """The rows' texts in ``field`` (the demonstration, or a ``chosen``/``rejected`` answer) as a
        one-output-per-row Rollout, scored by the current model: a demonstration can then join a
        sampled group (LUFFY, ViSurf; scored at the group's ``temperature``) or a preference pair."""
        ids, mask = self.demo_tokens(batch, field)
        logprobs = self._sequence_logprobs(batch, ids, temperature=temperature).cpu() * mask
        columns = {k: [row[k] for row in batch] for k in batch[0] if k not in MEDIA_AND_TEXT}
        return Rollout(logprobs=logprobs, mask=mask, group=torch.arange(len(batch)),
                       outputs=[row[field] for row in batch], prompts=[row["prompt"] for row in batch],
                       columns=columns, actions=TokenActions(list(batch), ids, self.pad_id), temperature=temperature,
                       truncated=torch.zeros(len(batch), dtype=torch.bool))

    def sft_loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict]:
        """Token NLL of the rows' completions (mean over demonstrated tokens, of all processes in a
        data-parallel step: :func:`~mmpost.distributed.token_count`)."""
        logprobs, mask = self.demo_logprobs(batch)
        return nll_loss(logprobs, mask, tokens=token_count(mask)), {"tokens": float(mask.sum())}

    def save(self, path: Path) -> None:
        """``save_pretrained`` of model and processor; with LoRA adapters the merged model (merged in
        place: the end of training), plus the adapter alone in ``path/adapter`` when it alone recreates
        the model from the original base (no earlier stage's adapters merged)."""
        model = unwrap(self.model)  # unwrap DDP/FSDP wrappers
        if hasattr(model, "merge_and_unload"):
            from mmpost.adapters.lora import save_merged

            save_merged(model, self.processor, path, with_adapter=not self.adapters_merged)
            return
        model.save_pretrained(path)
        self.processor.save_pretrained(path)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
