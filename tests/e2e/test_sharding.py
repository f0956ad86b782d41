"""Sharded runs (``sharding: fsdp``, FSDP2) on CPU processes (gloo) train exactly as unsharded ones.

- A token task, SFT then GRPO with a KL reference (a sharded copy): two sharded processes on two
  "machines" (two launches, machine ranks 0 and 1 on localhost) give the same losses and final
  parameters as one plain process with the same global batch; a sharded run SIGKILLed mid-stage and
  resumed from its distributed checkpoint ends where the uninterrupted one does.
- LoRA on a sharded base, its reference the base with the adapters off: as one plain process.
- The tile diffusion model (a diffusers UNet, whose FSDP units nest): sharded over two processes, the
  plain model's loss and gradients.
- The reach flow policy (called through ``encode`` / ``velocity_and_hidden``, not ``forward``):
  SFT then PPO sharded over two processes matches one plain process step for step (SFT's noise is
  drawn for the whole batch and sliced; each rollout call is seeded by its position, so
  ``generation_batch`` is the per-process batch, as for token tasks).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")

REWARD = "def longer(prompts, completions, **kw):\n    return [len(c) / 10 for c in completions]\n"
TOKEN_TASK = ["--task", "arithmetic", "--set", "data.train_size=32", "--set", "data.eval_size=4",
              "--set", "sft.steps=3",
              "--set", "sft.batch_size=4", "--set", "rl.steps=4", "--set", "rl.batch_size=4", "--set",
              "rl.sampling.group_size=4", "--set", "rl.sampling.max_new_tokens=12", "--set", "rl.optim.lr=1e-3",
              "--set", "rl.sampling.generation_batch=2", "--set", "rl.kl.coef=0.1", "--set", "eval.sampled=false",
              "--set", "checkpoint_every=1", "--rewards", "longer"]
REACH = ["--task", "reach", "--set", "sft.steps=4", "--set", "rl.steps=3", "--set", "rl.batch_size=8", "--set",
         "rl.sampling.generation_batch=4", "--set", "rl.pg.minibatches=1", "--set", "env.num_envs=4", "--set", "data.eval_size=4", "--set",
         "eval.sampled=false", "--set", "rl.kl.coef=0.1"]
TWO = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0"]


def _command(launcher, args, out, resume=False):
    where = ["--resume", str(out)] if resume else ["--output-dir", str(out)]
    return [*launcher, "-m", "mmpost.cli", "train", *args, "--set", "threads=1", *where]


def _environment(home, extra=None):
    return {**os.environ, "MMPOST_HOME": home, "OMP_NUM_THREADS": "1", **(extra or {})}


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train(launcher, args, out, home, *, resume=False, env=None, ok=True):
    result = subprocess.run(_command(launcher, args, out, resume), capture_output=True, text=True, timeout=600,
                            env=_environment(home, env))
    assert (result.returncode == 0) == ok, result.stderr[-4000:]
    return _metrics(out) if ok else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_on_two_machines(args, out, home):
    """One process on each of two machine ranks, both on localhost (as two nodes would run it)."""
    port = _free_port()
    machine = ["accelerate", "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--machine_rank"]
    launches = [subprocess.Popen(_command([*machine, str(rank)], args, out), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env=_environment(home)) for rank in (0, 1)]
    for launch in launches:
        _, stderr = launch.communicate(timeout=600)
        assert launch.returncode == 0, stderr[-4000:]
    return _metrics(out)


def _assert_same(one, two, keys):
    assert [(m["stage"], m["step"]) for m in one] == [(m["stage"], m["step"]) for m in two]
    for a, b in zip(one, two):
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["stage"], a["step"], key)


def _assert_same_weights(run_a, run_b):
    a, b = (load_file(run / "final" / "model.safetensors") for run in (run_a, run_b))
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-4, msg=name)


def test_sharded_token_runs_match_one_process_and_resume_exactly(mmpost_home, tmp_path):
    reward_file = tmp_path / "rewards.py"
    reward_file.write_text(REWARD)
    args = [*TOKEN_TASK, "--reward", f"{reward_file}:longer"]
    plain = _train([sys.executable], args, tmp_path / "plain", mmpost_home)
    sharded = _train_on_two_machines([*args, "--set", "sharding=fsdp"], tmp_path / "sharded", mmpost_home)
    keys = ("loss/sft", "loss/pg", "loss/kl", "reward/total/mean", "grad_norm", "tokens")
    _assert_same(plain, sharded, keys)
    assert any(abs(m.get("loss/pg", 0.0)) > 1e-4 for m in plain), "GRPO had nothing to learn: a vacuous check"
    _assert_same_weights(tmp_path / "plain", tmp_path / "sharded")
    checkpoint = tmp_path / "sharded" / "checkpoints" / "s01-000004"
    assert (checkpoint / "shards" / ".metadata").is_file() and not (checkpoint / "state.pt").stat().st_size > 10**6

    killed = tmp_path / "killed"  # every process SIGKILLs itself at its third GRPO sampling (step 3)
    _train(TWO, [*args, "--set", "sharding=fsdp"], killed, mmpost_home, env={"MMPOST_KILL_AT": "rl_sampling:3"},
           ok=False)
    complete = [c.name for c in sorted((killed / "checkpoints").iterdir()) if not c.name.startswith(".")]
    assert complete[-1] == "s01-000002"
    resumed = _train(TWO, [*args, "--set", "sharding=fsdp"], killed, mmpost_home, resume=True)
    _assert_same(plain, resumed, keys)
    _assert_same_weights(tmp_path / "plain", killed)


def test_sharded_flow_policy_matches_one_process(mmpost_home, tmp_path):
    plain = _train([sys.executable], REACH, tmp_path / "plain", mmpost_home)
    two = _train(TWO, [*REACH, "--set", "sharding=fsdp"], tmp_path / "two", mmpost_home)
    assert [m["stage"] for m in two].count("rl") == 3
    _assert_same(plain, two, ("loss/sft", "loss/pg", "loss/value", "reward/total/mean", "grad_norm"))
    assert any(abs(m.get("loss/pg", 0.0)) > 1e-4 for m in plain), "PPO had nothing to learn: a vacuous check"
    _assert_same_weights(tmp_path / "plain", tmp_path / "two")


@pytest.mark.parametrize("stages", ["rl", "sft,rl"])
def test_sharded_lora_with_its_reference_matches_one_process(mmpost_home, tmp_path, stages):
    """LoRA on a sharded base, its KL reference the base with the adapters off: the same as one plain
    process, for one training stage (GRPO: final/ has the adapter) and for two (SFT's adapters merged
    into the sharded base, shard by shard, before GRPO's start from B = 0)."""
    reward_file = tmp_path / "rewards.py"
    reward_file.write_text(REWARD)
    args = [*TOKEN_TASK, "--reward", f"{reward_file}:longer", "--set", f"sft.steps={3 if 'sft' in stages else 0}",
            "--set", "rl.steps=3", "--set", "rl.optim.lr=1e-2", "--set", "peft.r=8"]
    plain = _train([sys.executable], args, tmp_path / "plain", mmpost_home)
    sharded = _train(TWO, [*args, "--set", "sharding=fsdp"], tmp_path / "sharded", mmpost_home)
    _assert_same(plain, sharded, ("loss/sft", "loss/pg", "kl/sampled", "reward/total/mean", "grad_norm", "tokens"))
    _assert_same_weights(tmp_path / "plain", tmp_path / "sharded")
    if stages == "sft,rl":  # GRPO started from the merged SFT model: its KL to "adapters off" starts at 0
        assert [m["kl/sampled"] for m in plain if m["stage"] == "rl"][0] == pytest.approx(0.0, abs=1e-6)
        return
    adapters = [load_file(tmp_path / run / "final" / "adapter" / "adapter_model.safetensors")
                for run in ("plain", "sharded")]
    for name in adapters[0]:
        torch.testing.assert_close(adapters[1][name], adapters[0][name], rtol=0, atol=1e-4, msg=name)


def test_an_accelerate_fsdp_launch_selects_sharding(monkeypatch, tmp_path):
    """``distributed_type: FSDP`` in an accelerate config selects sharding, as the setting does (here a
    plain process, which has nothing to shard over: the run says so)."""
    import mmpost

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="sharding=fsdp needs a distributed launch"):
        mmpost.train("arithmetic", output_dir=str(tmp_path / "run"),
                     **{"trackers": [], "data.train_size": 8, "data.eval_size": 2, "sft.steps": 1})


def _sharded_diffusion_gradients(rank, port):
    import torch.distributed as dist

    from mmpost.adapters.diffusion_policy import DiffusionPolicy, TileDiffusionModel
    from mmpost.sharding import full, shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = {"tile_size": 32, "channels": [16, 32, 32, 64], "text_dim": 32, "prediction": "velocity"}
    plain, sharded = TileDiffusionModel(config), TileDiffusionModel(config)
    sharded.load_state_dict(plain.state_dict())
    batch = [{"tile": torch.rand(3, 32, 32), "description": "a red sphere"},
             {"tile": torch.rand(3, 32, 32), "description": "a blue box and a green cylinder"}]
    gradients, losses = [], []
    for model in (plain, sharded):
        if model is sharded:
            shard_model(model)
        torch.manual_seed(1)  # each process's rows of the same whole-batch noise and times, for both models
        loss, _ = DiffusionPolicy(model, sampler="flow_sde", steps=4).sft_loss(batch)
        loss.backward()
        losses.append(float(loss))
        gradients.append({name: full(p.grad) for name, p in model.named_parameters()})
    for gradient in gradients[0].values():  # the plain model's gradient: the mean over the two processes
        dist.all_reduce(gradient)
        gradient /= 2
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    dist.destroy_process_group()


def test_sharded_diffusion_model_has_the_plain_gradients():
    """A diffusers UNet's FSDP units nest (an up-block holds ResNet blocks): sharded bottom-up over two
    processes, the tile diffusion model's flow-matching loss and gradients are the plain model's."""
    import torch.multiprocessing as mp

    mp.spawn(_sharded_diffusion_gradients, args=(_free_port(),), nprocs=2)
