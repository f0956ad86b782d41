"""Offline weight operations on saved checkpoints: model merging and Model Surgery.

All functions work on state dicts (name -> tensor); :func:`merge_checkpoints` and
:func:`surgery_checkpoint` apply them to ``save_pretrained`` directories (single-file or sharded
safetensors), copying everything else (config, tokenizer, processor) from the first model.

* ``linear``: ``sum_i w_i theta_i`` with weights normalised to sum 1 (mergekit's ``linear``).
* ``slerp``: per tensor, spherical interpolation ``sin((1-t) W)/sin W a + sin(t W)/sin W b`` with
  ``cos W`` the cosine of the flattened tensors; linear when they are nearly parallel (mergekit).
  ``t`` is one number or a per-layer schedule (:func:`parse_schedule`, mergekit's gradient lists).
* ``ties`` (Yadav et al. 2023, TIES-Merging): task vectors ``tau_i = theta_i - theta_base``, each
  trimmed to its top ``density`` fraction by magnitude, sign elected per entry by the sign of the
  summed trimmed vectors, the entries agreeing with it averaged, ``theta_base + lambda * tau``.
* ``surgery`` (Model Surgery, ``lucywang720/model-surgery`` ``modify.py``): rows ``W[j]`` of the
  selected matrices most opposed to a probe direction ``w`` (``-cos(W[j], w)`` highest, top ``k``
  over all layers) are shifted by ``alpha * w``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch


def linear(states: list[dict], weights: list[float] | None = None) -> dict:
    weights = weights or [1.0] * len(states)
    if len(weights) != len(states):
        raise ValueError(f"linear merge: {len(weights)} weights for {len(states)} models")
    total = sum(weights)
    return {k: sum(w / total * s[k].float() for w, s in zip(weights, states)).to(states[0][k].dtype)
            for k in states[0]}


def slerp_tensor(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two tensors of one shape (``t = 0`` gives ``a``)."""
    a32, b32 = a.float().flatten(), b.float().flatten()
    cos = torch.dot(a32, b32) / (a32.norm() * b32.norm() + eps)
    if cos.abs() > 0.9995:  # nearly parallel: sin W ~ 0, interpolate linearly (mergekit's threshold)
        out = (1 - t) * a32 + t * b32
    else:
        omega = torch.arccos(cos.clamp(-1, 1))
        out = (torch.sin((1 - t) * omega) * a32 + torch.sin(t * omega) * b32) / torch.sin(omega)
    return out.view_as(a).to(a.dtype)


# The schedule of "Fine-tuning LLMs for domain adaptation" (arXiv 2409.03444; lamm-mit/LLM-finetuning
# README, merge_SLERP_and_save): attention moves from the first model to the second across the layers,
# the MLPs the other way, everything else halfway.
SCHEDULES = {"domain_adaptation": "self_attn=0,0.5,0.3,0.7,1; mlp=1,0.5,0.7,0.3,0; 0.5"}
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def parse_schedule(spec) -> list[tuple[str | None, list[float]]]:
    """A SLERP ``t``: a number, a named schedule (:data:`SCHEDULES`) or ``FILTER=v0,v1,...; ...; DEFAULT``
    (mergekit's ``parameters: t: [{filter, value}, ..., {value}]``) as ``[(filter or None, values)]``."""
    if isinstance(spec, (int, float)):
        return [(None, [float(spec)])]
    rules = []
    for part in SCHEDULES.get(spec.strip(), spec).split(";"):
        name, _, values = part.strip().rpartition("=")
        try:
            rules.append((name.strip() or None, [float(v) for v in values.split(",")]))
        except ValueError:
            raise ValueError(f"slerp t {spec!r}: expected a number, one of {', '.join(SCHEDULES)} or "
                             f"'FILTER=v0,v1,...; ...; DEFAULT', e.g. {SCHEDULES['domain_adaptation']!r}") from None
    return rules


def layer_t(name: str, num_layers: int, schedule: list[tuple[str | None, list[float]]]) -> float:
    """The ``t`` of tensor ``name`` (mergekit ``config.py::evaluate_setting``, ``plan.py::plan_slice``): the
    first rule whose filter is a substring of the name (or has none) applies; a list of K values spans the
    layers at equal spacing, linearly interpolated at ``layer / (num_layers - 1)``; a tensor outside the
    decoder layers (embeddings, final norm, head) is read at position 0."""
    match = LAYER.search(name)
    position = int(match.group(1)) / (num_layers - 1) if match and num_layers > 1 else float(bool(match))
    for pattern, values in schedule:
        if pattern is None or pattern in name:
            scaled = position * (len(values) - 1)
            low = min(int(scaled), len(values) - 1)
            high = min(low + 1, len(values) - 1)
            return (1 - (scaled - low)) * values[low] + (scaled - low) * values[high]
    return 0.5  # mergekit's fallback when no rule matches and none is a default


def slerp(states: list[dict], t=0.5, num_layers: int = 0) -> dict:
    """SLERP of two state dicts; ``t`` a number or a schedule (:func:`parse_schedule`) over ``num_layers``
    decoder layers (default: counted in these states)."""
    if len(states) != 2:
        raise ValueError(f"slerp merges exactly two models, got {len(states)}")
    schedule = parse_schedule(t) if not isinstance(t, list) else t
    num_layers = num_layers or count_layers(states[0])
    return {k: slerp_tensor(states[0][k], states[1][k], layer_t(k, num_layers, schedule)) for k in states[0]}


def count_layers(names) -> int:
    """The number of decoder layers named ``...layers.N...`` among ``names``."""
    return 1 + max((int(m.group(1)) for n in names if (m := LAYER.search(n))), default=-1)


def ties(base: dict, states: list[dict], density: float = 0.2, scale: float = 1.0) -> dict:
    if not 0 < density <= 1:
        raise ValueError(f"ties: density must be in (0, 1], got {density}")
    merged = {}
    for k, base_tensor in base.items():
        taus = []
        for s in states:
            tau = s[k].float() - base_tensor.float()
            keep = max(1, int(round(density * tau.numel())))
            threshold = tau.abs().flatten().kthvalue(tau.numel() - keep + 1).values
            taus.append(torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau)))
        stacked = torch.stack(taus)
        sign = torch.sign(stacked.sum(0))
        agree = (torch.sign(stacked) == sign) & (stacked != 0)
        tau = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
        merged[k] = (base_tensor.float() + scale * tau).to(base_tensor.dtype)
    return merged


def surgery(state: dict, probe: torch.Tensor, pattern: str = "mlp.gate_proj.weight", k: int = 16,
            alpha: float = 1.0) -> tuple[dict, list[tuple[str, int]]]:
    """Shift the ``k`` rows most opposed to ``probe`` (over all matrices whose name contains
    ``pattern``) by ``alpha * probe``; returns the new state and the edited (name, row) pairs."""
    names = [n for n, t in state.items() if pattern in n and t.dim() == 2]
    if not names:
        raise ValueError(f"surgery: no 2-D parameter name contains {pattern!r}")
    probe = probe.float().flatten()
    scores = []
    for name in names:
        rows = state[name].float()
        if rows.shape[1] != probe.numel():
            raise ValueError(f"surgery: probe has {probe.numel()} entries, {name} rows have {rows.shape[1]}")
        cos = rows @ probe / (rows.norm(dim=1) * probe.norm() + 1e-8)
        scores += [(-float(c), name, j) for j, c in enumerate(cos)]
    chosen = sorted(scores, key=lambda s: s[0], reverse=True)[:k]
    out = dict(state)
    for name in {n for _, n, _ in chosen}:
        out[name] = state[name].clone()
    for _, name, j in chosen:
        out[name][j] += (alpha * probe).to(out[name].dtype)
    return out, [(n, j) for _, n, j in chosen]


def train_probe(positive: torch.Tensor, negative: torch.Tensor, steps: int = 300, lr: float = 0.1) -> torch.Tensor:
    """A linear behaviour probe (logistic regression, no bias) on hidden states [N, H] of the two
    classes; returns the unit direction that scores ``positive`` high (Model Surgery's probe)."""
    x = torch.cat([positive, negative]).float()
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    w = torch.zeros(x.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y).backward()
        optimizer.step()
    return (w / w.norm()).detach()


# ---------------------------------------------------------------- checkpoint directories


def _weight_files(model_dir: Path) -> list[str]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (model_dir / "model.safetensors").exists():
        return ["model.safetensors"]
    raise FileNotFoundError(f"{model_dir}: no model.safetensors (or index); save the model with save_pretrained")


def _map_checkpoints(model_dirs: list[Path], out_dir: Path, fn) -> None:
    """Write ``out_dir``: the first model's files, each weight file replaced by ``fn(states)``."""
    from safetensors.torch import load_file, save_file

    model_dirs = [Path(d) for d in model_dirs]
    files = _weight_files(model_dirs[0])
    for d in model_dirs[1:]:
        if _weight_files(d) != files:
            raise ValueError(f"{d} is sharded differently from {model_dirs[0]}: merge needs the same architecture")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose a new output directory")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dirs[0], tmp, ignore=shutil.ignore_patterns("*.safetensors"))
    for name in files:
        states = [load_file(d / name) for d in model_dirs]
        keys = set(states[0])
        for d, s in zip(model_dirs[1:], states[1:]):
            if set(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
                raise ValueError(f"{d / name}: parameter names or shapes differ from {model_dirs[0] / name}")
        save_file({k: v.contiguous() for k, v in fn(states).items()}, tmp / name, metadata={"format": "pt"})
    tmp.rename(out_dir)  # a crash never leaves a half-written model under the final name


def merge_checkpoints(model_dirs: list[str], out_dir: str, method: str = "linear", weights=None, t=0.5,
                      base: str | None = None, density: float = 0.2, scale: float = 1.0) -> None:
    """Merge saved models into ``out_dir`` by ``method`` (``linear`` | ``slerp`` | ``ties``); ``t`` (slerp)
    is a number or a per-layer schedule (:func:`parse_schedule`), its layers counted over all shards."""
    if method == "linear":
        _map_checkpoints(model_dirs, out_dir, lambda states: linear(states, weights))
    elif method == "slerp":
        from safetensors import safe_open

        schedule = parse_schedule(t)
        names = [k for f in _weight_files(Path(model_dirs[0])) for k in safe_open(Path(model_dirs[0]) / f, "pt").keys()]
        _map_checkpoints(model_dirs, out_dir, lambda states: slerp(states, schedule, count_layers(names)))
    elif method == "ties":
        if not base:
            raise ValueError("ties needs --base: the model the others were fine-tuned from")
        _map_checkpoints([base, *model_dirs], out_dir, lambda states: ties(states[0], states[1:], density, scale))
    else:
        raise ValueError(f"unknown merge method {method!r}; expected linear, slerp or ties")


def surgery_checkpoint(model_dir: str, probe_path: str, out_dir: str, pattern: str = "mlp.gate_proj.weight",
                       k: int = 16, alpha: float = 1.0) -> list[tuple[str, int]]:
    """Apply :func:`surgery` to a saved model with the probe direction saved in ``probe_path`` (a
    ``torch.save``-d 1-D tensor or a safetensors file with a ``probe`` entry)."""
    if probe_path.endswith(".safetensors"):
        from safetensors.torch import load_file

        probe = load_file(probe_path)["probe"]
    else:
        probe = torch.load(probe_path, weights_only=True)
    if Path(model_dir).joinpath("model.safetensors.index.json").exists():
        raise ValueError("surgery ranks rows over all layers at once: save the model unsharded first")
    edited = []

    def edit(states):
        state, rows = surgery(states[0], probe, pattern, k, alpha)
        edited.extend(rows)
        return state

    _map_checkpoints([model_dir], out_dir, edit)
    return edited
