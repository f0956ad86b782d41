"""A group's shared images go through the processor and the vision tower once, not once per sample.

A GRPO group is ``n`` completions of one prompt, so the rows a training forward scores repeat each
prompt ``n`` times. Encoding every copy costs ``n`` times the image preprocessing and the vision
tower's forward and backward (measured on the default chart2code VLM, 8 rows of 2 prompts: a
forward-backward of 0.060 s becomes 0.049 s). Here each distinct prompt is encoded once, its
vision features are computed once (with grad), and both are indexed out to the rows: the logits
are identical and the vision tower's gradient is the same sum over the group's samples.

It goes through transformers' own entry point for pre-computed features, the ``mm_encoder_outputs``
forward argument (recent transformers 5.x, e.g. 5.24: most VLMs, Qwen2/2.5/3-VL, LLaVA, FastVLM, Gemma 3),
and only where every processor output is one it knows how to index; anything else (audio models,
processors with extra per-image tensors, parameters sharded by FSDP) is encoded per row as before.
"""

from __future__ import annotations

import inspect

import torch

from mmpost.adapters.hf import transformers_model

ROW_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"}  # one row per prompt
# per image / per video, in the order the rows list them; pixels are replaced by the features
MEDIA_KEYS = {"pixel_values": "image", "image_grid_thw": "image",
              "pixel_values_videos": "video", "video_grid_thw": "video"}
PIXEL_KEYS = {"pixel_values", "pixel_values_videos"}
ROW_MEDIA = {"image": "images", "video": "videos"}  # where a row keeps its media of each kind


def distinct_rows(rows: list[dict]) -> tuple[list[dict], list[int]]:
    """The distinct row objects in first-seen order, and each row's position among them."""
    position: dict[int, int] = {}
    distinct, index = [], []
    for row in rows:
        if id(row) not in position:
            position[id(row)] = len(distinct)
            distinct.append(row)
        index.append(position[id(row)])
    return distinct, index


def can_share(model, encoded: dict) -> bool:
    """Whether every key of ``encoded`` can be indexed per row and, with images or videos, whether
    ``model`` takes pre-computed features for them (a wrapped model, DDP or FSDP, is left alone)."""
    if not set(encoded) <= ROW_KEYS | set(MEDIA_KEYS):
        return False
    if not set(encoded) & PIXEL_KEYS:
        return True  # text only: the tokenizer's rows are indexed
    network = transformers_model(model)
    if "mm_encoder_outputs" not in inspect.signature(network.forward).parameters:
        return False
    # parameters sharded across processes (FSDP2) are gathered by the root module's forward only
    return all(type(p.data) is torch.Tensor for p in network.parameters())


def _media_index(distinct: list[dict], index: list[int], kind: str) -> list[int]:
    """Positions of each row's images (or videos) among the distinct rows' ones."""
    counts = [len(row.get(ROW_MEDIA[kind], [])) for row in distinct]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [starts[r] + j for r in index for j in range(counts[r])]


def shared_media_inputs(model, encoded: dict, distinct: list[dict], index: list[int]) -> dict:
    """Model inputs for the rows ``index`` points at (``encoded``: the processor's output for
    ``distinct``), with ``mm_encoder_outputs`` holding each distinct image's and video's features,
    computed once and repeated per row, in place of the pixels."""
    network = transformers_model(model)
    rows = torch.tensor(index, device=encoded["input_ids"].device)
    inputs = {key: value[rows] for key, value in encoded.items() if key in ROW_KEYS}
    features = {}
    for kind in ("image", "video"):
        keys = [key for key, owner in MEDIA_KEYS.items() if owner == kind and key in encoded]
        if not any(key in PIXEL_KEYS for key in keys):
            continue
        encoder = getattr(network.base_model, f"get_{kind}_features")
        arguments = {key: encoded[key] for key in inspect.signature(encoder).parameters if key in encoded}
        output = encoder(**arguments, return_dict=True)
        media = torch.tensor(_media_index(distinct, index, kind), device=rows.device)
        pooled = output.pooler_output  # one [tokens, hidden] tensor per image (a tuple, or stacked)
        output.pooler_output = pooled[media] if torch.is_tensor(pooled) else [pooled[i] for i in media.tolist()]
        features[kind] = output
        for key in keys:
            if key not in PIXEL_KEYS:  # grid sizes: the model places the features' positions with them
                inputs[key] = encoded[key][media]
    if features:
        inputs["mm_encoder_outputs"] = features
    return inputs
