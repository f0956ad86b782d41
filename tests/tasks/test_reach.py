"""``mmpost train --task reach`` end to end (short), exact resume, the Python API with a named
recipe, the backbone following the observations, a mixed stage on the flow policy, and the GPU
simulators' extras failing clearly here."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

QUICK = ["--set", "sft.steps=20", "--set", "rl.steps=4", "--set", "data.demos=4", "--set", "data.eval_size=8",
         "--set", "env.num_envs=8", "--set", "rl.batch_size=8", "--set", "eval.batch_size=8",
         "--set", "env.video_episodes=2", "--set", "checkpoint_every=2", "--set", "flow.hidden=64"]


def mmpost(*args, env=None, check=True):
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", *args], capture_output=True, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1", **(env or {})}, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


def test_reach_cli_run_directory(tmp_path, mmpost_home):
    from mmpost.models.flow_action import FlowActionModel

    run = tmp_path / "run"
    mmpost("train", "--task", "reach", "--output-dir", str(run), *QUICK)
    results = json.loads((run / "results.json").read_text())
    assert {"before", "after_sft", "after"} <= set(results)
    for key in ("before", "after"):
        assert 0.0 <= results[key]["greedy"]["success"] <= 1.0
        assert 0.0 <= results[key]["sampled"]["success"] <= 1.0
        assert len(list((run / "samples" / key).glob("*_episode.gif"))) == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r["stage"] == "rl"]
    assert len(rl) == 4 and all(r["time/simulate"] > 0 and r["time/infer"] > 0 and r["time/update"] > 0 for r in rl)
    assert all("loss/value" in r and "env/success" in r for r in rl)
    model = FlowActionModel.from_pretrained(run / "final")
    assert model.config["state_dim"] == 16 and model.config["action_dim"] == 2


def test_reach_resume_is_exact(tmp_path, mmpost_home):
    """A run whose last checkpoint was lost (crash) resumes from the previous one and ends with the
    same parameters and the same metrics as the uninterrupted run."""
    from safetensors.torch import load_file

    full, crashed = tmp_path / "full", tmp_path / "crashed"
    mmpost("train", "--task", "reach", "--output-dir", str(full), *QUICK)
    mmpost("train", "--task", "reach", "--output-dir", str(crashed), *QUICK)
    import shutil

    shutil.rmtree(crashed / "checkpoints" / "s01-000004")
    shutil.rmtree(crashed / "final")
    mmpost("train", "--resume", str(crashed))
    a, b = load_file(str(full / "final" / "model.safetensors")), load_file(str(crashed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if not k.startswith("time/") and k not in  # noqa: E731
                           ("seconds", "samples_per_s", "tokens_per_s")} for line in path.read_text().splitlines()]
    assert strip(full / "metrics.jsonl") == strip(crashed / "metrics.jsonl")


def test_python_api_named_recipe(tmp_path, mmpost_home):
    import mmpost as api

    overrides = {arg.split("=")[0]: arg.split("=")[1] for arg in QUICK[1::2]}
    results = api.train(task="reach", recipe="flow_noise_grpo", output_dir=str(tmp_path / "api"),
                        **{**overrides, "rl.batch_size": 2, "rl.sampling.group_size": 4, "rl.pg.minibatches": 2})
    config = (tmp_path / "api" / "config.yaml").read_text()
    assert "noise_method: flow_noise" in config and "estimator: group" in config
    assert "after" in results
    with pytest.raises(ValueError, match="unknown recipe"):
        api.build_config("reach", recipe="flow_sde_ppq")


def test_gpu_simulators_fail_clearly_without_their_extras(tmp_path, mmpost_home):
    if importlib.util.find_spec("mani_skill") is None:
        result = mmpost("train", "--task", "reach", "--env", "maniskill:PickCube-v1", "--output-dir",
                        str(tmp_path / "m"), "--set", "sft.steps=0", check=False)
        assert result.returncode == 2 and "mmpost[maniskill]" in result.stderr
    if importlib.util.find_spec("libero") is None:  # and no private LIBERO environment (MMPOST_LIBERO: none there)
        result = mmpost("train", "--task", "reach", "--env", "libero:libero_spatial", "--output-dir",
                        str(tmp_path / "l"), "--set", "sft.steps=0", check=False,
                        env={"MMPOST_LIBERO": str(tmp_path / "no-libero")})
        assert result.returncode == 2 and "mmpost setup libero" in result.stderr and "mmpost[libero]" in result.stderr


def test_backbone_follows_the_observations(mmpost_home):
    import mmpost as api
    from mmpost.tasks.reach import Reach

    with pytest.raises(ValueError, match="cannot see camera images"):
        api.build_config("reach", overrides={"env.obs": "image", "flow.backbone": "mlp"})
    with pytest.raises(ValueError, match="reads camera images"):
        api.build_config("reach", overrides={"flow.backbone": "vlm"})
    cfg = api.build_config("reach", overrides={"env.obs": "image", "env.num_envs": 2})
    policy = Reach(cfg).policy()
    try:
        assert policy.model.config["backbone"] == "timm:resnet10t" and policy.model.image is not None
        rollout = policy.rollout([{"seed": 1}], 2)
        assert rollout.actions.image.shape[-3:] == (64, 64, 3)
        with torch.no_grad():
            assert torch.allclose(policy.logprobs(rollout), rollout.logprobs, atol=1e-4)
    finally:
        policy.close()


def test_mixed_stage_on_a_flow_policy(tmp_path, mmpost_home):
    """CHORD's demonstration term works for a flow-matching policy too: its SFT term is flow matching
    on expert chunks drawn from the demos split while PPO trains on initial states."""
    run = tmp_path / "run"
    mmpost("train", "--task", "reach", "--output-dir", str(run), *QUICK, "--set", "rl.kind=mixed",
           "--set", "rl.demos.data=demos", "--set", "rl.demos.mu=[0.5,0.1,0,4]")
    rl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if r["stage"] == "rl"]
    assert len(rl) == 4 and all("loss/sft" in r and "loss/value" in r for r in rl)
    assert [r["mu"] for r in rl] == pytest.approx([0.5, 0.5 - 0.4 * 0.5 * (1 - 0.7071068), 0.3, 0.1 + 0.4 * 0.5 * (1 - 0.7071068)],
                                                 abs=1e-6)
