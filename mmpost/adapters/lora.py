"""LoRA adapters (PEFT) on a policy's model, and the frozen reference they make free.

Within a stage the base weights never change, so the frozen start-of-stage model a KL or
preference term needs is the same model with its adapters switched off: no second copy in memory
(as TRL does for PEFT models). :class:`AdapterDisabledReference` is that view; between stages the
trainer merges the adapters into the base and starts fresh ones (:func:`restart_adapters`).
"""

from __future__ import annotations

import inspect
import sys

import torch

from mmpost.adapters.hf import load_model, unwrap
from mmpost.config import PeftConfig


def add_lora(policy, cfg: PeftConfig) -> int:
    """Wrap ``policy.model`` with LoRA adapters on ``cfg.target_modules``; only they train.
    Returns the number of trainable parameters."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized_weights(policy.model):  # QLoRA: norms in full precision, inputs keep a gradient path
        policy.model = prepare_model_for_kbit_training(policy.model, use_gradient_checkpointing=False)
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=list(cfg.target_modules))
    try:
        policy.model = get_peft_model(policy.model, config)
    except ValueError as error:  # e.g. no module matches target_modules
        names = sorted({n.rsplit(".", 1)[-1] for n, m in policy.model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"peft.target_modules={list(cfg.target_modules)}: {error}. Linear layers of this model: "
                         f"{', '.join(names)}") from None
    return sum(p.numel() for p in policy.model.parameters() if p.requires_grad)


@torch.no_grad()
def restart_adapters(policy) -> None:
    """Merge the trained adapters into the base weights for good and start them again from B = 0 (as
    LoRA initialises them): the model is unchanged and "adapters off" is now the current model.

    Done in place, so the model keeps its structure: a data-parallel or sharded (FSDP2) model needs no
    rewrapping, and on shards the merge runs shard by shard. A keeps its trained values (LoRA only
    needs BA = 0 at the start, and any non-zero A lets B learn)."""
    from peft.tuners.lora import LoraLayer

    network = unwrap(policy.model)
    network.merge_adapter()
    for module in network.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.merged_adapters:
            if name in module.lora_B:
                module.lora_B[name].weight.zero_()
            if name in module.lora_embedding_B:
                module.lora_embedding_B[name].zero_()
        module.merged_adapters.clear()  # the base keeps the merge: nothing to subtract when the adapters run again


def quantized_weights(model) -> list[str]:
    """State-dict keys of the model's bitsandbytes 4-bit linear weights (with their quantization
    state entries), i.e. QLoRA's frozen base; [] for a full-precision model."""
    bnb = sys.modules.get("bitsandbytes")  # imported by transformers when it loaded a quantized model
    if bnb is None or model is None:
        return []
    names = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    if not names:
        return []
    # a quantized layer's own entries but its (full-precision) bias: "weight", "weight.absmax",
    # "weight.quant_map", "weight.quant_state.*"
    prefixes = tuple(f"{name}." for name in names)
    return [k for k in model.state_dict() if k.startswith(prefixes) and not k.endswith(".bias")]


def checkpoint_state(model) -> dict:
    """The model's state for a checkpoint. A quantized base is left out: it is frozen for the whole
    (single) QLoRA stage and rebuilt bit for bit from the original checkpoint on resume."""
    skip = set(quantized_weights(model))
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def restore_state(model, state: dict) -> None:
    """Load :func:`checkpoint_state` output; only the quantized base may be absent from it."""
    skip = set(quantized_weights(model))
    if not skip:
        model.load_state_dict(state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if k not in skip] + list(unexpected)
    if wrong:
        raise RuntimeError(f"the checkpoint does not match the model: {wrong[:5]}")


def has_adapters(policy) -> bool:
    return hasattr(unwrap(getattr(policy, "model", None)), "disable_adapter")


class AdapterDisabledReference:
    """The policy with its adapters disabled: the frozen base model, sharing the policy's weights.

    Every method of the policy is available and runs with the adapters off; ``shares_policy`` tells
    the trainer not to freeze, copy or checkpoint it separately."""

    shares_policy = True

    def __init__(self, policy):
        self._policy = policy

    def __getattr__(self, name):
        attribute = getattr(self._policy, name)
        if not inspect.ismethod(attribute):  # data and the model itself pass through
            return attribute

        def with_adapters_off(*args, **kwargs):
            with unwrap(self._policy.model).disable_adapter():
                return attribute(*args, **kwargs)

        return with_adapters_off


def save_merged(model, processor, path, with_adapter: bool = True) -> None:
    """Save the model with its adapters merged in to ``path`` (loadable with ``from_pretrained`` like
    any checkpoint) and, when ``with_adapter`` (the adapter alone recreates it from the original
    base: one adapter-training stage), the adapter to ``path/adapter``. Merges in place: call at the end."""
    from pathlib import Path

    path = Path(path)
    peft_model = unwrap(model)
    quantized = bool(quantized_weights(peft_model))
    if with_adapter or quantized:
        peft_model.save_pretrained(path / "adapter")
        processor.save_pretrained(path / "adapter")
    if quantized:  # QLoRA: merge into the full-precision base, not the quantized copy
        export_adapter(path / "adapter", path)
        return
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(path)
    processor.save_pretrained(path)


def export_adapter(adapter_dir, out, base: str | None = None) -> None:
    """``mmpost export``: merge a saved adapter into its base model (the one recorded in the adapter's
    config, or ``base``) and save the result with its processor."""
    import json
    from pathlib import Path

    from peft import PeftModel
    from transformers import AutoProcessor


    adapter_dir = Path(adapter_dir)
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json (a PEFT adapter directory)")
    base = base or json.loads(config.read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(load_model(base), adapter_dir).merge_and_unload()
    model.save_pretrained(out)
    source = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base
    AutoProcessor.from_pretrained(source).save_pretrained(out)
