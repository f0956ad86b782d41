"""Typed configuration: a run is a :class:`TrainConfig`; a recipe is its list of :class:`Stage`.

Overrides are dotted paths (``--set rl.optim.lr=1e-5``, ``--set data.train_size=500``). A stage is
addressed by its name (``sft.steps``, ``rl.sampling.group_size``) or as ``stages.NAME.FIELD``; its
fields are grouped in sections (:mod:`mmpost.stages.spec`). Unknown keys raise with the closest valid
key; a key of the earlier flat stage (``rl.kl_coef``) raises with its new name (``rl.kl.coef``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmpost.registry import check_choice, closest
from mmpost.stages.spec import RENAMED, RETIRED, SECTIONS, STAGE_KINDS, Stage  # noqa: F401  (STAGE_KINDS: re-exported)

@dataclass
class DataConfig:
    train_size: int = 4000  # synthetic training examples
    eval_size: int = 100  # held-out examples for before/after evaluation
    path: str = ""  # a user's dataset instead of the synthetic generator: .jsonl, .parquet, .csv or a datasets directory
    eval_path: str = ""  # a user's held-out file (same format); "" = the last eval_size rows of path (at most half)
    columns: list[str] = field(default_factory=list)  # FIELD=COLUMN renames, e.g. image=img_path,code=program
    skip_bad_rows: bool = False  # skip (and count) malformed rows instead of failing
    demos: int = 20  # robot tasks: scripted expert episodes for few-shot SFT
    noise: float = 0.0  # arithmetic: share of training rows whose worked solution belongs to another problem


@dataclass
class EnvConfig:
    """The simulator of a robot task (see :mod:`mmpost.envs`)."""

    name: str = ""  # "" = the task's own scene; "maniskill:PickCube-v1", "libero:libero_spatial" (GPU extras)
    obs: str = "state"  # "state" (proprioception + scene state + instruction) | "image" (camera + proprio + instruction)
    num_envs: int = 64  # envs stepped in parallel (episodes beyond this run in waves)
    workers: int = 1  # > 1: step the envs in this many subprocesses (backend "ray": Ray actors)
    # "local": this machine's processes | "ray": the env shares as Ray actors on any node of a Ray cluster
    # (RAY_ADDRESS, else a local Ray instance; a lost actor is replaced and its episodes replayed)
    backend: str = "local"
    chunk_len: int = 4  # control steps executed per action chunk
    max_chunks: int = 8  # episode length limit, in chunks
    image_size: int = 64  # camera images: side in pixels (env.obs=image)
    video_episodes: int = 4  # held-out episodes recorded as GIFs before and after training


@dataclass
class FlowConfig:
    """The flow-matching action policy (:class:`~mmpost.adapters.flow_policy.FlowActionPolicy`)."""

    backbone: str = ""  # "" = mlp for env.obs=state, timm:resnet10t for image | "mlp" | "timm:NAME" | "vlm" (Qwen2-VL class)
    vlm: str = ""  # vlm backbone checkpoint (local dir or hub id); "" = the tiny offline Qwen2-VL
    train_backbone: bool = True  # False freezes the image/VLM encoder (pi_RL trains the action expert only)
    hidden: int = 256  # width of the encoder and action-expert MLPs
    action_horizon: int = 8  # predicted steps per chunk (the first env.chunk_len are executed)
    flow_steps: int = 4  # integration steps K from noise (t=1) to action (t=0)
    noise_method: str = "flow_sde"  # "flow_sde" (one stochastic step, fixed noise) | "flow_noise" (learned noise, all steps)
    noise_level: float = 0.5  # flow_sde: a in sigma_t = a * sqrt(t / (1 - t))
    noise_std_range: list = field(default_factory=lambda: [0.08, 0.16])  # flow_noise: min/max std of the noise head
    logprob_level: str = "chunk"  # "chunk": one ratio per chunk | "element": one per action element
    detach_critic: bool = True  # value-head gradients do not flow into the encoder
    # standardise each state dimension by the demonstrations' mean and std (kept in the saved model):
    # ManiSkill's state mixes joint velocities (std ~0.8) with the cube's offset (std ~0.03)
    normalize_state: bool = False

    def __post_init__(self):
        if self.noise_method not in ("flow_sde", "flow_noise"):
            raise ValueError(f"flow.noise_method must be 'flow_sde' or 'flow_noise', got {self.noise_method!r}")
        if self.logprob_level not in ("chunk", "element"):
            raise ValueError(f"flow.logprob_level must be 'chunk' or 'element', got {self.logprob_level!r}")
        if self.flow_steps < 1 or self.action_horizon < 1:
            raise ValueError("flow.flow_steps and flow.action_horizon must be >= 1")
        if not (self.backbone in ("", "mlp", "vlm") or self.backbone.startswith("timm:")):
            raise ValueError(f"flow.backbone must be 'mlp', 'vlm' or 'timm:NAME', got {self.backbone!r}")
        self.noise_std_range = [float(v) for v in self.noise_std_range]


@dataclass
class DiffusionConfig:
    """The image diffusion policy (:class:`~mmpost.adapters.diffusion_policy.DiffusionPolicy`)."""

    sampler: str = "ddim"  # "ddim" (DDPO/Carve3D, epsilon model) | "flow_sde" (Flow-GRPO, flow-matching model)
    steps: int = 10  # denoising steps per sample (RL and evaluation)
    eta: float = 1.0  # ddim: noise of the stochastic sampler (> 0 so every step has a density)
    noise_level: float = 0.7  # flow_sde: a in sigma_s = a * sqrt(s / (1 - s)) (Flow-GRPO's default)
    guidance: float = 1.0  # classifier-free guidance scale (1 = off)
    timestep_fraction: float = 0.5  # rl: fraction of each sample's steps trained on (DDPO)

    def __post_init__(self):
        if self.sampler not in ("ddim", "flow_sde"):
            raise ValueError(f"diffusion.sampler must be 'ddim' or 'flow_sde', got {self.sampler!r}")
        if self.steps < 1 or not 0 < self.timestep_fraction <= 1:
            raise ValueError("diffusion.steps >= 1 and 0 < diffusion.timestep_fraction <= 1 required")
        if self.sampler == "ddim" and self.eta <= 0:
            raise ValueError("diffusion.eta must be > 0: deterministic DDIM steps have no log-prob to train on")


TRACKERS = ("tensorboard", "wandb", "trackio")


@dataclass
class PeftConfig:
    """LoRA adapters through PEFT (token policies). ``r`` = 0: full fine-tuning. With adapters, a
    stage's frozen reference is the same model with its adapters disabled (no second copy)."""

    r: int = 0  # LoRA rank; 0 = no adapters (full fine-tuning)
    alpha: int = 16  # LoRA scale alpha (the update is scaled by alpha / r)
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # modules that get adapters
    # QLoRA: "nf4" loads the frozen base quantized through bitsandbytes (4-bit NormalFloat with double
    # quantization, as QLoRA), adapters in full precision; "" = full-precision base.
    quantize: str = ""

    def __post_init__(self):
        if self.r < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"peft: r >= 0, alpha > 0 and 0 <= dropout < 1 required, got r={self.r}, "
                             f"alpha={self.alpha}, dropout={self.dropout}")
        if self.quantize not in ("", "nf4"):
            raise ValueError(f"peft.quantize must be '' or 'nf4', got {self.quantize!r}")


ROLLOUT_BACKENDS = ("hf", "vllm", "vllm_server")


@dataclass
class RolloutConfig:
    """How token policies sample. ``hf``: transformers' ``generate`` on the training model (any device).
    ``vllm``: a vLLM engine in this process on the training GPU (extra ``[vllm]``), sent the current
    weights before every rollout; ``vllm_server``: a vLLM server on other GPUs (``trl vllm-serve``),
    sent the weights over NCCL. Log-probs are still recomputed by the training model, so the
    policy-gradient ratio never mixes the two numerics."""

    # "hf" (transformers generate) | "vllm" (a vLLM engine on the training GPU) | "vllm_server" (a server started
    # with `trl vllm-serve --model PATH` on other GPUs; every process samples from it, the main one sends weights)
    backend: str = "hf"
    gpu_memory_utilization: float = 0.3  # share of the GPU vLLM may take (weights + KV cache); training needs the rest
    dtype: str = "auto"  # vLLM's dtype: "auto" (the checkpoint's), "bfloat16", "float16", "float32"
    max_model_len: int = 0  # prompt + completion tokens; 0 = the model's maximum
    enforce_eager: bool = False  # True skips CUDA-graph capture (faster start, slower decoding)
    # vllm: processes per engine (its tensor parallelism); 1 = an engine for every process (data parallel)
    tensor_parallel_size: int = 1
    server_url: str = "http://127.0.0.1:8000"  # vllm_server: where `trl vllm-serve` listens
    server_timeout: float = 240.0  # vllm_server: seconds to wait for the server at the start

    def __post_init__(self):
        if self.backend not in ROLLOUT_BACKENDS:
            raise ValueError(f"rollout.backend must be one of {ROLLOUT_BACKENDS}, got {self.backend!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"rollout.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"rollout.dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if self.max_model_len < 0:
            raise ValueError(f"rollout.max_model_len must be >= 0, got {self.max_model_len}")
        if self.tensor_parallel_size < 1 or (self.tensor_parallel_size > 1 and self.backend != "vllm"):
            raise ValueError(f"rollout.tensor_parallel_size must be >= 1, and above 1 only with rollout.backend=vllm "
                             f"(the server's own is `trl vllm-serve --tensor-parallel-size`), got "
                             f"{self.tensor_parallel_size} with backend {self.backend!r}")


@dataclass
class EvalConfig:
    # the rows a run is evaluated on: "heldout", or "validation" (unseen rows of the training distribution,
    # to choose settings without looking at the held-out split) where the task's generator has one
    split: str = "heldout"
    sampled: bool = True  # also evaluate at temperature 1 (besides greedy)
    samples_to_save: int = 8  # held-out samples written to the run directory
    batch_size: int = 50  # held-out rows generated at a time
    # > 0: also a greedy evaluation every N optimiser updates of the run (across stages), logged in
    # metrics.jsonl as eval/SPLIT/METRIC beside "updates": the learning curve (mmpost study plots it)
    every: int = 0
    curve: list[str] = field(default_factory=list)  # the splits of those evaluations; [] = the run's split

    def __post_init__(self):
        check_choice("eval.split", self.split, ("heldout", "validation"))
        if self.every < 0:
            raise ValueError(f"eval.every must be >= 0 (0: no learning curve), got {self.every}")
        for split in self.curve:
            check_choice("eval.curve", split, ("heldout", "validation", "ood"))


@dataclass
class TrainConfig:
    """Everything a run needs. Saved resolved as ``config.yaml`` in the run directory."""

    task: str = "chart2code"  # a registered task (`mmpost list tasks`)
    model: str = ""  # local path or hub id of a checkpoint; "" = the task's tiny offline default
    seed: int = 0  # seeds model init, data order, sampling and the simulators
    output_dir: str = ""  # "" = runs/<task>-<timestamp>
    threads: int = 2  # torch threads; 1-2 on small CPUs (oversubscription is many times slower)
    mixed_precision: str = "no"  # "no" | "bf16" (autocast; for GPUs)
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30% slower)
    # token policies: teacher-forced forwards (SFT, rollout scoring) pack the batch's rows into one
    # sequence without padding (per-row position ids; FlashAttention's variable-length path on GPUs)
    padding_free: bool = False
    # token policies' attention kernel: "" = the model's own default (SDPA); "flash_attention_2" (GPUs,
    # the flash-attn package: packed rows then run variable-length), "sdpa", "eager"
    attn_implementation: str = ""
    # "fsdp": shard parameters, gradients and optimiser state over the processes of a distributed launch
    # (FSDP2; also chosen by an accelerate config with distributed_type: FSDP); "none": each process
    # holds the whole model (data parallel)
    sharding: str = "none"
    rewards: list[str] = field(default_factory=list)  # "" = the task's default rewards
    reward_weights: list[float] = field(default_factory=list)  # default: 1.0 each
    # User rewards defined in files, as ABSOLUTE_FILE.py:FUNCTION (--reward, or a function passed to
    # mmpost.train): loaded again whenever this config is (--resume, --config)
    reward_files: list[str] = field(default_factory=list)
    sandbox_workers: int = 2  # processes that run generated code (chart2code) in the sandbox
    # "local": the sandbox's fork-servers on this machine | "ray": each a Ray actor on any node of a Ray
    # cluster (the same confinement inside; a lost actor's jobs run again)
    sandbox_backend: str = "local"
    image_pixels: int = 0  # > 0: every image is resized to about this many pixels (e.g. 224*224); 0 = the processor's range
    clip_model: str = ""  # video_semantic's CLIP: ARCH:CHECKPOINT (local open_clip weights); "" = tiny, trained here
    checkpoint_every: int = 200  # optimiser steps between checkpoints (and at each stage end)
    keep_checkpoints: int = 2  # newest checkpoints kept (older ones are deleted once a newer one is complete)
    max_steps: int = 0  # > 0 caps every stage's steps (quick runs)
    # A reward that raises, returns the wrong count or a non-finite/non-numeric value: "contain"
    # (those samples get no reward from it; logged and counted) or "raise" (stop, naming the reward).
    reward_errors: str = "contain"
    # Where step metrics also go (accelerate's trackers; metrics.jsonl is always written): any of
    # "tensorboard" (local, under RUN_DIR/tensorboard), "wandb", "trackio"; [] for none.
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    max_nonfinite_steps: int = 10  # a NaN/inf loss or gradient skips the step; this many in a row abort the run
    # Which parameters train, by name pattern (fnmatch; a pattern without "*" matches as a substring):
    # e.g. trainable=[vision_tower] trains the vision encoder only (PIVOT), frozen=[vision_tower]
    # everything but it. Empty = all parameters train.
    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)  # name patterns of parameters kept frozen
    data: DataConfig = field(default_factory=DataConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # token policies' sampler (hf or vllm)
    eval: EvalConfig = field(default_factory=EvalConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # robot tasks only
    flow: FlowConfig = field(default_factory=FlowConfig)  # flow-matching action policies only
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # image diffusion policies only
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self):
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise ValueError(f"trackers: unknown {unknown}; choose from {', '.join(TRACKERS)} (or [] for none)")
        check_choice("sharding", self.sharding, ("none", "fsdp"))
        check_choice("attn_implementation", self.attn_implementation, ("", "flash_attention_2", "sdpa", "eager"))
        check_choice("sandbox_backend", self.sandbox_backend, ("local", "ray"))
        check_choice("env.backend", self.env.backend, ("local", "ray"))
        if self.reward_errors not in ("contain", "raise"):
            raise ValueError(f"reward_errors must be 'contain' or 'raise', got {self.reward_errors!r}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise ValueError("reward_weights needs one weight per reward")
        try:  # from --set they arrive as strings
            self.reward_weights = [float(w) for w in self.reward_weights]
        except ValueError:
            raise ValueError(f"reward_weights must be numbers, got {self.reward_weights}") from None
        if self.flow.backbone not in ("", "mlp") and self.env.obs != "image":
            raise ValueError(f"flow.backbone={self.flow.backbone!r} reads camera images: set env.obs=image")
        if self.flow.backbone == "mlp" and self.env.obs == "image":
            raise ValueError("flow.backbone=mlp cannot see camera images: use timm:NAME or vlm with env.obs=image")
        for stage in self.stages:  # cross-section rules, after overrides
            stage.__post_init__()
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.peft.quantize:
            if not self.peft.r:
                raise ValueError(f"peft.quantize={self.peft.quantize} freezes a quantized base: set peft.r > 0 "
                                 "to train adapters on it (QLoRA)")
            if sum(1 for s in self.stages if s.steps) > 1:
                raise ValueError(f"peft.quantize={self.peft.quantize} trains one stage's adapters: merging them "
                                 "into a quantized base between stages would be lossy. Keep one training stage "
                                 "(e.g. --set rl.steps=0), start the next run from this one's final/, or leave "
                                 "peft.quantize=''")
            if self.rollout.backend == "vllm":
                raise ValueError("peft.quantize with rollout.backend=vllm is not supported (vLLM would need the "
                                 "quantized weights); use one of them")

    def requirements(self) -> list[tuple[type, str]]:
        """``(capability Protocol, what needs it)`` for every stage term and run setting: the one list
        :func:`mmpost.policy.missing_capabilities` checks against the task's policy."""
        from mmpost.policy import ImageResizing, TokenDemos, VLLMSampling

        run = [(TokenDemos, "peft (LoRA adapters)") if self.peft.r else None,
               (TokenDemos, "padding_free") if self.padding_free else None,
               (TokenDemos, f"attn_implementation={self.attn_implementation}") if self.attn_implementation else None,
               (VLLMSampling, f"rollout.backend={self.rollout.backend}") if self.rollout.backend != "hf" else None,
               (ImageResizing, "image_pixels") if self.image_pixels else None]
        stages = [(c, f"stage {s.name!r}: {reason}") for s in self.stages for c, reason in s.requirements()]
        return [need for need in run if need] + stages

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}.{closest(name, [s.name for s in self.stages])}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _coerce(value: Any, current: Any, key: str):
    if isinstance(value, str) and not isinstance(current, str):
        if isinstance(current, float):
            try:
                return float(value)  # YAML would read "5e-4" as a string
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {value!r}") from None
        value = yaml.safe_load(value)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if current is not None and not isinstance(value, type(current)) and not isinstance(current, list):
        raise ValueError(f"{key}: expected {type(current).__name__}, got {value!r}")
    if isinstance(current, list) and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if isinstance(current, list) and value is None:  # --set trackers=  (nothing)
        value = []
    return value


def _set_field(obj, parts: list[str], value, full_key: str) -> None:
    """Set ``parts`` of ``obj``, then re-validate every section and stage on the path (leaf first)."""
    name = parts[0]
    valid = [f.name for f in dataclasses.fields(obj)]
    if isinstance(obj, Stage) and name in RENAMED and (name not in valid or len(parts) == 1):  # a flat key of old
        new = full_key[:len(full_key) - len(".".join(parts))] + RENAMED[name]
        raise KeyError(f"config key {full_key!r} is now {new!r} (stage fields are grouped in sections)")
    section = {cls: key for key, cls in SECTIONS.items()}.get(type(obj))
    if section and f"{section}.{name}" in RETIRED:
        raise KeyError(f"config key {full_key!r}: {RETIRED[f'{section}.{name}']}")
    if name not in valid:
        raise KeyError(f"unknown config key {full_key!r}.{_suggest(obj, name, valid)} Valid here: {', '.join(valid)}")
    child = getattr(obj, name)
    if len(parts) == 1:
        if dataclasses.is_dataclass(child):
            fields = ", ".join(f"{full_key}.{f.name}" for f in dataclasses.fields(child))
            raise KeyError(f"config key {full_key!r} is a section; set one of its fields: {fields}")
        setattr(obj, name, _coerce(value, child, full_key))
    elif not dataclasses.is_dataclass(child):
        raise KeyError(f"config key {full_key!r}: {name!r} has no fields")
    else:
        _set_field(child, parts[1:], value, full_key)
    # a section checks its own field now; a stage's checks across sections and the run's wait until all
    # overrides are in (`--set rl.batch_size=2 --set rl.pg.minibatches=1` must not depend on the order)
    if hasattr(obj, "__post_init__") and not isinstance(obj, (TrainConfig, Stage)):
        obj.__post_init__()


def _suggest(obj, name: str, valid: list[str]) -> str:
    """" Did you mean ...?" for a mistyped key; on a stage also among its sections' fields and the
    earlier flat keys, named by their path (``grop_size`` -> ``sampling.group_size``)."""
    if not isinstance(obj, Stage):
        return closest(name, valid)
    paths = {f.name: f"{section}.{f.name}" for section, fields in obj.sections().items()
             for f in dataclasses.fields(fields)}
    paths.update({**RENAMED, **{key: key for key in valid}})
    match = difflib.get_close_matches(name, list(paths), n=1, cutoff=0.5)
    return f" Did you mean {paths[match[0]]!r}?" if match else ""


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Apply dotted-path overrides in place (and return ``cfg``); raise on unknown keys."""
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) >= 3:
            _set_field(cfg.stage(parts[1]), parts[2:], value, key)
        elif parts[0] in [s.name for s in cfg.stages] and len(parts) >= 2:
            _set_field(cfg.stage(parts[0]), parts[1:], value, key)
        elif len(parts) >= 2 and parts[0] not in {f.name for f in dataclasses.fields(cfg)}:
            names = [s.name for s in cfg.stages]
            raise KeyError(f"unknown config key {key!r}: {parts[0]!r} is neither a config section nor a stage of "
                           f"this recipe (stages: {', '.join(names) or 'none'}; set a stage's field as "
                           f"STAGE.FIELD, e.g. {names[-1] if names else 'sft'}.optim.lr)."
                           f"{closest(parts[0], names + [f.name for f in dataclasses.fields(cfg)])}")
        else:
            _set_field(cfg, parts, value, key)
    for stage in cfg.stages:
        stage.__post_init__()
    return cfg


def parse_set(items: list[str]) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}`` with a clear error for a missing ``=``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def stages_from_yaml(path: str | Path) -> list[Stage]:
    """Read a recipe file: ``stages: [{name, kind, steps, ...}, ...]`` (unknown fields raise)."""
    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict) and "task" in data:
        raise ValueError(f"{path} is a full config (task, seed, rewards, ... besides stages): run it with "
                         f"`mmpost train --config {path}`; --recipe takes a file of stages only")
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ValueError(f"{path}: a recipe needs a non-empty 'stages' list")
    return [Stage.from_dict(entry, where=f"{path}: stage {i}: ") for i, entry in enumerate(data["stages"])]


def from_dict(data: dict) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from :meth:`TrainConfig.to_dict` output (e.g. for ``--resume``);
    a stage saved with the earlier flat keys is moved into its sections (:data:`RENAMED`)."""
    data = dict(data)
    for f in dataclasses.fields(TrainConfig):  # nested sections (data, eval, peft, ...) back into their classes
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(section := f.default_factory()):
            data[f.name] = type(section)(**data.get(f.name, {}))
    data["stages"] = [Stage.from_dict(s, upgrade=True) for s in data.get("stages", [])]
    return TrainConfig(**data)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run saved as ``config.yaml`` (for ``--resume``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    return from_dict(yaml.safe_load(path.read_text()))
