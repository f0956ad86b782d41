"""``mmpost doctor``: what this machine gives mmpost — versions, optional extras, sandbox confinement, device."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

PACKAGES = ("torch", "torchvision", "transformers", "accelerate", "trl", "peft", "diffusers", "timm",
            "open_clip_torch", "qwen-vl-utils", "matplotlib", "mujoco", "tensorboard")
EXTRAS = {"vllm": ("vllm", "rollout.backend=vllm (GPU)"), "nerfstudio": ("nerf", "MRC with nerfacto; or mmpost setup nerfstudio (private environment)"),
          "mani_skill": ("maniskill", "ManiSkill on CPU or GPU physics; then mmpost setup maniskill"), "libero": ("libero", "LIBERO suites; or mmpost setup libero (private environment)"),
          "wandb": ("wandb", "Weights & Biases tracking"), "trackio": ("trackio", "Trackio tracking"),
          "bitsandbytes": ("qlora", "peft.quantize: QLoRA's quantized base")}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> dict:
    """Print and return the report."""
    import torch

    from mmpost.models.tiny_qwen2vl import mmpost_home

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "packages": {p: _version(p) for p in PACKAGES},
            "extras": {module: bool(importlib.util.find_spec(module)) for module in EXTRAS}}
    from mmpost.envs import libero_install
    from mmpost.rewards import mrc_nerfstudio

    # or in the private environments `mmpost setup libero` / `mmpost setup nerfstudio` made
    info["extras"]["libero"] |= libero_install.ENV.installed()
    info["extras"]["nerfstudio"] |= mrc_nerfstudio.ENV.installed()
    info["device"] = {"cuda": torch.cuda.is_available(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    home = mmpost_home()
    info["cache"] = {"path": str(home), "writable": os.access(home if home.exists() else home.parent, os.W_OK)}
    try:
        from mmpost.sandbox import Sandbox

        with Sandbox("mmpost.rewards.chart_figure", workers=1) as box:
            info["sandbox"] = box.capabilities
    except Exception as error:  # noqa: BLE001 - the report says what failed
        info["sandbox"] = {"error": f"{type(error).__name__}: {error}"}
    print(f"mmpost doctor\npython {info['python']} on {info['platform']}")
    for name, version in info["packages"].items():
        print(f"  {name:<16} {version}")
    print("optional extras:")
    for module, present in info["extras"].items():
        extra, what = EXTRAS[module]
        print(f"  {module:<16} {'present' if present else 'absent'}  ({what}; pip install 'mmpost[{extra}]')")
    device = info["device"]
    print(f"device: {'CUDA ' + ', '.join(device['gpus']) if device['cuda'] else 'CPU only'}; {device['cpus']} CPUs, "
          f"torch threads {device['torch_threads']}")
    print(f"cache: {info['cache']['path']} ({'writable' if info['cache']['writable'] else 'NOT writable'})")
    print("sandbox: " + ", ".join(f"{k}={v}" for k, v in info["sandbox"].items()))
    return info
