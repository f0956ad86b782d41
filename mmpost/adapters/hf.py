"""Loading and unwrapping transformers models: the helpers every token-policy module shares.

Kept apart from :mod:`~mmpost.adapters.token_policy` and :mod:`~mmpost.adapters.lora` so that neither
imports the other (the decode loop, shared media and LoRA all need them).
"""

from __future__ import annotations

import torch


def unwrap(model):
    """The model inside a DDP / FSDP wrapper; any other model as it is."""
    return getattr(model, "module", model)


def transformers_model(model):
    """The transformers model inside a PEFT wrapper (with the adapters' layers in it); any other
    model as it is."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_model(path, dtype: torch.dtype = torch.float32, quantize: str = "", device: str | torch.device = "cpu",
               attn_implementation: str = ""):
    """Any multimodal LM transformers knows (image, video or audio + text), or a text-only causal LM;
    with ``quantize="nf4"`` its linear layers loaded 4-bit by bitsandbytes (QLoRA's frozen base);
    ``attn_implementation`` ("" = the model's default) as transformers names the kernels."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMultimodalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES

    multimodal = AutoConfig.from_pretrained(path).model_type in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES
    loader = AutoModelForMultimodalLM if multimodal else AutoModelForCausalLM
    kernel = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if not quantize:
        return loader.from_pretrained(path, dtype=dtype, **kernel)
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ImportError(f"peft.quantize={quantize} needs bitsandbytes: pip install 'mmpost[qlora]' "
                          f"({error})") from error
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize, bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    model = loader.from_pretrained(path, dtype=dtype, quantization_config=config, device_map={"": str(device)}, **kernel)
    # bitsandbytes (0.50) repacks a 4-bit weight for its CPU inference kernel on the first eval-mode
    # forward and keeps it packed, after which a training forward fails ("a view of a leaf Variable
    # ... in-place"): generation and training alternate here, so keep the training layout.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model
