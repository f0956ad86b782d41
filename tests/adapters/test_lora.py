"""LoRA through PEFT: only adapters train, the KL reference is the same model with adapters off (no
copy), stages hand over by merging, the final model is saved merged (and the adapter alone), and
``mmpost export`` merges a saved adapter into its base."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mmpost.adapters.lora import AdapterDisabledReference, add_lora
from mmpost.adapters.token_policy import TokenPolicy
from mmpost.config import PeftConfig

ROWS = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "completion": "2 + 3 = 5"},
        {"prompt": [{"role": "user", "content": "What is 7 - 4?"}], "completion": "7 - 4 = 3"}]


def test_reference_is_the_base_with_adapters_off(tiny_model_dir):
    base = TokenPolicy.from_pretrained(tiny_model_dir)
    policy = TokenPolicy.from_pretrained(tiny_model_dir)
    trainable = add_lora(policy, PeftConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert 0 < trainable < sum(p.numel() for p in base.model.parameters()) / 10
    assert all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    torch.manual_seed(0)
    for name, parameter in policy.model.named_parameters():
        if "lora_B" in name:  # LoRA starts as the identity (B = 0); move it so the two models differ
            parameter.data.normal_(0, 0.5)
    reference = AdapterDisabledReference(policy)
    with torch.no_grad():
        base_lp, _ = base.demo_logprobs(ROWS)
        ref_lp, _ = reference.demo_logprobs(ROWS)
        policy_lp, _ = policy.demo_logprobs(ROWS)
    torch.testing.assert_close(ref_lp, base_lp)
    assert not torch.allclose(policy_lp, base_lp, atol=1e-3)
    assert reference.model is policy.model  # one model in memory, not a copy


def test_bad_target_modules_name_the_model_layers(tiny_model_dir):
    policy = TokenPolicy.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="Linear layers of this model: .*q_proj"):
        add_lora(policy, PeftConfig(r=4, target_modules=["no_such_proj"]))


def _train(out, **overrides):
    import mmpost

    mmpost.train("arithmetic", output_dir=str(out), **{
        "peft.r": 4, "data.train_size": 16, "data.eval_size": 2, "sft.steps": 3, "sft.batch_size": 4, "sft.optim.lr": 1e-2,
        "rl.steps": 2, "rl.batch_size": 2, "rl.sampling.group_size": 2, "rl.sampling.max_new_tokens": 8, "rl.kl.coef": 0.1,
        "threads": 1, "eval.sampled": False, "checkpoint_every": 1, **overrides})


def test_single_stage_lora_saves_adapter_that_export_merges(mmpost_home, tmp_path):
    from mmpost.adapters.lora import export_adapter

    out = tmp_path / "run"
    _train(out, **{"rl.steps": 0})
    adapter = out / "final" / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    merged = load_file(out / "final" / "model.safetensors")
    assert not any("lora_" in k for k in merged)
    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = load_file(f"{base_dir}/model.safetensors")
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all(("q_proj" in k or "k_proj" in k or "v_proj" in k or "o_proj" in k) for k in changed)
    export_adapter(adapter, tmp_path / "exported")
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    for key in merged:
        torch.testing.assert_close(exported[key], merged[key])


def test_two_stage_lora_merges_between_stages_and_keeps_kl_reference(mmpost_home, tmp_path):
    out = tmp_path / "run"
    _train(out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [m for m in metrics if m["stage"] == "rl"]
    assert rl and all("kl/sampled" in m for m in rl)
    # RL's first step samples from the model SFT left: its KL to the reference (adapters off = that
    # model, since SFT's adapters were merged and fresh ones start at zero) is exactly 0
    assert rl[0]["kl/sampled"] == pytest.approx(0.0, abs=1e-6)
    assert not (out / "final" / "adapter").exists()  # the last adapter alone no longer rebuilds the model
    assert not any("lora_" in k for k in load_file(out / "final" / "model.safetensors"))


def test_lora_run_killed_in_rl_resumes_exactly(mmpost_home, tmp_path):
    """kill -9 during the second (RL) stage of a LoRA run: the resumed run keeps the merged SFT base and
    the RL adapter from the checkpoint and ends bitwise equal to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    args = ["train", "--task", "arithmetic", "--set", "peft.r=4", "--set", "data.train_size=16", "--set",
            "data.eval_size=2", "--set", "sft.steps=3", "--set", "sft.batch_size=4", "--set", "sft.optim.lr=1e-2",
            "--set", "rl.steps=3", "--set", "rl.batch_size=2", "--set", "rl.sampling.group_size=2", "--set",
            "rl.sampling.max_new_tokens=8", "--set", "rl.kl.coef=0.1", "--set", "threads=1", "--set", "eval.sampled=false",
            "--set", "checkpoint_every=1", "--set", "trackers="]

    def cli(extra, env=None):
        return subprocess.run([sys.executable, "-m", "mmpost.cli", *extra], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "MMPOST_HOME": mmpost_home, **(env or {})})

    full, crashed = tmp_path / "full", tmp_path / "crashed"
    assert cli([*args, "--output-dir", str(full)]).returncode == 0
    killed = cli([*args, "--output-dir", str(crashed)], env={"MMPOST_KILL_AT": "rl_sampling:2"})
    assert killed.returncode == -signal.SIGKILL
    resumed = cli(["train", "--resume", str(crashed)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(full / "final" / "model.safetensors"), load_file(crashed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ QLoRA (quantized base, bitsandbytes)

def test_qlora_base_is_4bit_and_only_adapters_train(tiny_model_dir):
    import bitsandbytes as bnb

    policy = TokenPolicy.from_pretrained(tiny_model_dir, quantize="nf4")
    add_lora(policy, PeftConfig(r=4, target_modules=["q_proj", "v_proj"], quantize="nf4"))
    quantized = [m for m in policy.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) > 10  # every linear layer of the tower and the LM but the output head
    assert all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    policy.rollout(ROWS, 2)  # an eval-mode pass first: the training forward must still work after it
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss, _ = policy.sft_loss(ROWS)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_qlora_config_errors():
    import mmpost

    with pytest.raises(ValueError, match="peft.quantize must be"):
        PeftConfig(r=4, quantize="nf3")
    with pytest.raises(ValueError, match="set peft.r > 0"):
        mmpost.build_config("arithmetic", overrides={"peft.quantize": "nf4", "rl.steps": 0})
    with pytest.raises(ValueError, match="trains one stage"):  # SFT then RL
        mmpost.build_config("arithmetic", overrides={"peft.r": 4, "peft.quantize": "nf4"})
    with pytest.raises(ValueError, match="rollout.backend=vllm"):
        mmpost.build_config("arithmetic", overrides={"peft.r": 4, "peft.quantize": "nf4", "rl.steps": 0,
                                                      "rollout.backend": "vllm"})
    mmpost.build_config("arithmetic", overrides={"peft.r": 4, "peft.quantize": "nf4", "rl.steps": 0})


def test_qlora_run_killed_resumes_exactly_and_saves_a_full_precision_model(mmpost_home, tmp_path):
    """A single-stage QLoRA run (CHORD's mixed stage: GRPO + SFT on demonstrations, so an untrained
    model's all-zero rewards still leave a gradient; KL to the adapters-off 4-bit base), killed
    mid-stage and resumed, ends bitwise equal to the uninterrupted run; final/ is the full-precision
    base with the adapter merged (W + B A alpha / r, by hand), final/adapter the adapter."""
    import os
    import signal
    import subprocess
    import sys

    args = ["train", "--task", "arithmetic", "--recipe", "chord", "--set", "peft.r=4", "--set", "peft.quantize=nf4", "--set",
            "peft.target_modules=q_proj,v_proj", "--set", "data.train_size=16", "--set", "data.eval_size=2",
            "--set", "sft.steps=0", "--set", "mixed.steps=3", "--set", "mixed.batch_size=2", "--set",
            "mixed.sampling.group_size=2", "--set", "mixed.sampling.max_new_tokens=8", "--set", "mixed.kl.coef=0.1", "--set",
            "mixed.optim.lr=1e-2", "--set", "threads=1", "--set", "eval.sampled=false", "--set", "checkpoint_every=1",
            "--set", "trackers="]

    def cli(extra, env=None):
        return subprocess.run([sys.executable, "-m", "mmpost.cli", *extra], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "MMPOST_HOME": mmpost_home, **(env or {})})

    full, crashed = tmp_path / "full", tmp_path / "crashed"
    done = cli([*args, "--output-dir", str(full)])
    assert done.returncode == 0, done.stderr[-3000:]
    killed = cli([*args, "--output-dir", str(crashed)], env={"MMPOST_KILL_AT": "rl_sampling:2"})
    assert killed.returncode == -signal.SIGKILL
    resumed = cli(["train", "--resume", str(crashed)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(full / "final" / name), load_file(crashed / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    config = json.loads((full / "final" / "config.json").read_text())
    assert "quantization_config" not in config  # a plain full-precision checkpoint
    adapter_dir = full / "final" / "adapter"
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = load_file(f"{adapter_config['base_model_name_or_path']}/model.safetensors")
    merged, adapter = load_file(full / "final" / "model.safetensors"), load_file(adapter_dir / "adapter_model.safetensors")
    scale = adapter_config["lora_alpha"] / adapter_config["r"]
    # adapter keys name the module inside the PEFT wrapper ("...language_model.layers.0.self_attn.q_proj");
    # the checkpoint names it as saved ("model.layers.0.self_attn.q_proj"): match on "layers.N.<module>"
    deltas = {k[k.index("layers."):].replace(".lora_A.weight", ".weight"):
              adapter[k.replace("lora_A", "lora_B")] @ adapter[k] * scale for k in adapter if "lora_A" in k}
    assert len(deltas) == 4  # q_proj and v_proj of both layers
    for key in base:
        module = key[key.index("layers."):] if "layers." in key else None
        if module in deltas:
            torch.testing.assert_close(merged[key], base[key] + deltas.pop(module))
        else:
            assert torch.equal(merged[key], base[key]), key
    assert not deltas
