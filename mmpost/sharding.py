"""Sharded data parallelism: FSDP2 (torch's ``fully_shard``), ``sharding: fsdp``.

Each process holds 1/N of every parameter, gradient and optimiser moment; a layer's full weights
exist only while it runs (all-gathered before, freed after). Runs start as data-parallel ones do
(``accelerate launch --num_processes N``) and match one process step for step
(:mod:`mmpost.distributed`).

Why mmpost calls ``fully_shard`` itself rather than through accelerate's FSDP plugin: accelerate
applies the plugin only on accelerators (on CPU processes it stays ``MULTI_CPU`` and shards nothing),
and the suite checks sharded runs on CPU processes; on GPUs this is the same call accelerate makes
for ``fsdp_version: 2``. An accelerate config file with ``distributed_type: FSDP`` selects it too.

What sharding changes for the rest of the engine:

- every forward pass all-gathers, so all processes must run the same number of them: generation
  loops stop only when every process has finished (:func:`all_done`), and evaluations run on
  every process;
- a sharded module cannot be deep-copied: the frozen reference is :func:`sharded_copy`, built from
  a weightless copy of the model's structure taken before sharding (:func:`shard_model`);
- checkpoints hold the model, optimiser and reference as a torch distributed checkpoint (each
  process writes its own shards; :func:`save_shards` / :func:`load_shards`), resumable exactly;
- ``final/`` is still one plain directory: :func:`full_model` gathers the weights into that
  weightless copy on the main process, which saves it as an unsharded run would.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist

from mmpost.distributed import world

CHOICES = ("none", "fsdp")


@runtime_checkable
class CalledByMethods(Protocol):
    """A network that policies call through methods other than ``forward`` (a flow model's ``encode``,
    ``velocity_and_hidden``, ...): sharding registers them so each gathers the weights, as ``forward`` does."""

    sharded_methods: tuple[str, ...]


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor's full value (collective: every process must call it); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def requested(setting: str) -> bool:
    """Whether the run shards: ``sharding: fsdp``, or an accelerate launch configured for FSDP."""
    return setting == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def inference(model):
    """``torch.inference_mode()`` for generating with ``model``; ``no_grad`` for a sharded one, whose
    all-gather buffers are reused by training afterwards (inference tensors cannot be)."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


def all_done(done: bool, model) -> bool:
    """``done`` on every process, for loops of forward passes over ``model``: a sharded model's
    processes must keep calling it until all have finished (each call is collective)."""
    if not is_sharded(model) or world()[1] == 1:
        return done
    flag = torch.tensor(int(done), device=next(model.parameters()).device)  # (NCCL reduces GPU tensors only)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def resharded(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every FSDP unit holding only its shards again. After a forward pass without
    backward (an evaluation) the root unit keeps its full weights as plain tensors in place of the
    sharded parameters; the optimiser, gradient clipping and copies must see the sharded ones."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def _structure(model: torch.nn.Module, device) -> torch.nn.Module:
    """A copy of ``model`` whose parameters are new, uninitialised tensors on ``device`` ("meta":
    no memory); buffers are copied, parameters shared between modules (tied embeddings) stay shared."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def _units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules that become FSDP units: transformers' blocks (each model's ``_no_split_modules``,
    the classes it never splits across devices); the root takes the rest. Innermost first: a unit may
    hold others (a diffusers UNet's up-block holds its ResNet blocks), and FSDP2 shards bottom-up."""
    names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or [])}
    return [module for module in reversed(list(model.modules()))
            if module is not model and type(module).__name__ in names]


def _fully_shard(model: torch.nn.Module, mixed_precision: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (world()[1],))
    # bf16: FSDP2's own mixed precision (weights all-gathered and computed in bf16, gradients reduced
    # in fp32) takes the place of accelerate's autocast, which wraps only models it prepares
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    for unit in _units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for method in model.sharded_methods if isinstance(model, CalledByMethods) else ():
        register_fsdp_forward_method(model, method)


def shard_model(model: torch.nn.Module, mixed_precision: str = "no") -> torch.nn.Module:
    """Shard ``model`` in place over the processes; return its weightless structure (for
    :func:`sharded_copy` and :func:`full_model`)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError("sharding=fsdp needs a distributed launch (`accelerate launch --num_processes N -m "
                               "mmpost.cli train ...` or torchrun): a plain process has nothing to shard over")
        # a launch of one process (accelerate starts no process group for it): a group of one
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    structure = _structure(model, "meta")
    _fully_shard(model, mixed_precision)
    return structure


def sharded_copy(model: torch.nn.Module, structure: torch.nn.Module, mixed_precision: str = "no") -> torch.nn.Module:
    """A frozen copy of the sharded ``model`` (its current weights), sharded the same way; no process
    ever holds the full weights."""
    device = next(resharded(model).parameters()).device
    twin = _structure(structure, device)
    _fully_shard(twin, mixed_precision)
    source = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for name, tensor in [*twin.named_parameters(), *twin.named_buffers()]:
            tensor.copy_(source[name])  # the same shard of the same tensor on this process
    return twin.requires_grad_(False).eval()


def full_model(model: torch.nn.Module, structure: torch.nn.Module) -> torch.nn.Module | None:
    """The unsharded model with the current weights, on the main process (``None`` elsewhere); every
    process must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(resharded(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world()[0] != 0:
        return None
    plain = _structure(structure, "cpu").to("cpu")  # (the structure's buffers are on the training device)
    plain.load_state_dict(state)
    return plain


def _state(model, optimizer, reference):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # strict=False: parameters that never had a gradient (a VLM's vision tower on a text task) have
    # no optimiser state to save or load
    options = StateDictOptions(strict=False)
    model_state, optimizer_state = get_state_dict(resharded(model), optimizer, options=options)
    state = {"model": model_state, "optimizer": optimizer_state}
    if reference is not None:
        state["reference"] = reference.state_dict()
    return state, options


def save_shards(directory: Path, model, optimizer, reference=None) -> None:
    """Each process writes its shards of the model, optimiser and (own-copy) reference to
    ``directory`` (a torch distributed checkpoint); every process must call this."""
    import torch.distributed.checkpoint as dcp

    state, _ = _state(model, optimizer, reference)
    dcp.save(state, checkpoint_id=str(directory))


def load_shards(directory: Path, model, optimizer=None, reference=None) -> None:
    """Load what :func:`save_shards` wrote into the sharded ``model`` (and ``optimizer`` and
    ``reference`` when given); every process must call this."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict, set_state_dict

    if optimizer is None:  # (the run's start: the optimiser is built by the stage)
        state = {"model": get_model_state_dict(resharded(model))}
        dcp.load(state, checkpoint_id=str(directory))
        set_model_state_dict(model, state["model"])
        return
    state, options = _state(model, optimizer, reference)
    # partial: the fresh optimiser's state lists every parameter, the saved one only those that had gradients
    # (the model itself was loaded in full, strictly, at the run's start)
    dcp.load(state, checkpoint_id=str(directory), planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=options)
    if reference is not None:
        reference.load_state_dict(state["reference"])
