"""What ``--model`` names: a saved model directory, a run directory (its ``final/``) or a hub id.

Checked before any work starts, so that a wrong path is one line naming it, not a transformers
traceback after the run directory was made.
"""

from __future__ import annotations

from pathlib import Path

# what a loadable directory holds: transformers' save_pretrained, a diffusers pipeline, a PEFT adapter
MODEL_FILES = ("config.json", "model_index.json", "adapter_config.json")
WHAT_A_MODEL_DIR_HOLDS = ("a model directory holds config.json (save_pretrained), model_index.json (diffusers) or "
                          "adapter_config.json (LoRA); a run directory holds final/")


class ModelLoadError(ValueError):
    """A ``--model`` that is not a local model directory and that the hub could not provide."""


def resolve_model(model: str, builtin: tuple[str, ...] = ()) -> str:
    """``model`` as the loaders take it: a run directory becomes its ``final/``; a local directory must
    hold a model; a string that is a path to nothing, or a hub id neither cached nor reachable, fails
    here. ``builtin``: names the task builds itself (a name ending in ``:`` is a prefix), left alone.
    Any other hub id is left to the loaders (:class:`ModelLoadError` if they cannot get it)."""
    if not model or any(model == b or (b.endswith(":") and model.startswith(b)) for b in builtin):
        return model
    path = Path(model).expanduser()
    if path.is_dir():
        if any((path / name).is_file() for name in MODEL_FILES):
            return str(path)
        if (path / "config.yaml").is_file():  # a run directory
            if any((path / "final" / name).is_file() for name in MODEL_FILES):
                return str(path / "final")
            raise ValueError(f"--model {model}: this run has no final/ model yet (continue it with "
                             f"`mmpost train --resume {model}`)")
        raise ValueError(f"--model {model}: not a model directory ({WHAT_A_MODEL_DIR_HOLDS})")
    if path.exists():
        raise ValueError(f"--model {model}: a file, not a model directory ({WHAT_A_MODEL_DIR_HOLDS})")
    if model.startswith((".", "/", "~")) or model.endswith("/") or model.count("/") > 1:
        raise ValueError(f"--model {model}: no such directory ({WHAT_A_MODEL_DIR_HOLDS}; a hub id is ORG/NAME)")
    if not _in_hub_cache(model) and not _hub_reachable():  # fail now, not after the hub client's retries
        raise ValueError(f"--model {model}: no local directory of that name, not in the Hugging Face cache, and the "
                         f"hub cannot be reached from here. {WHAT_A_MODEL_DIR_HOLDS[0].upper()}"
                         f"{WHAT_A_MODEL_DIR_HOLDS[1:]}")
    return model


def _in_hub_cache(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(model, name), str) for name in MODEL_FILES)


def _hub_reachable() -> bool:
    """Whether the hub's host resolves (HF_HUB_OFFLINE set: no): an offline machine answers at once."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def build_policy(task, model: str, **kwargs):
    """``task.policy(**kwargs)``, with a model the loaders could not get (not a local directory and not
    available from the hub, or unreadable) as one :class:`ModelLoadError` line instead of a traceback."""
    try:
        return task.policy(**kwargs)
    except OSError as error:
        if not model:
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = ("cannot load it" if Path(model).expanduser().exists()
                 else "no local directory of that name, and the hub could not provide it")
        raise ModelLoadError(f"--model {model}: {where} ({reason}). {WHAT_A_MODEL_DIR_HOLDS[0].upper()}"
                             f"{WHAT_A_MODEL_DIR_HOLDS[1:]}") from error
