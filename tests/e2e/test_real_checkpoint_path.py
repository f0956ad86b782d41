"""`--model PATH` trains a locally saved checkpoint through the ordinary from_pretrained path,
including another family member (a tiny Qwen2.5-VL saved to disk, as a user's download would be)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .test_train_cli import QUICK


@pytest.fixture(scope="module")
def qwen25_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig

    small = Qwen2VLConfig.from_pretrained(tiny_model_dir)
    text = small.text_config.to_dict()
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=text["hidden_size"],
                           window_size=56, fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=small.image_token_id, video_token_id=small.video_token_id,
        vision_start_token_id=small.vision_start_token_id, vision_end_token_id=small.vision_end_token_id,
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    out = tmp_path_factory.mktemp("user_checkpoint") / "qwen2.5-vl-tiny"
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_train_a_local_qwen25_checkpoint(mmpost_home, qwen25_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "MMPOST_HOME": mmpost_home}
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "train", "--model", str(qwen25_dir), *QUICK,
                             "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "final" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["stage"] == "rl"
