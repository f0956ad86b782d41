"""Rewards of episodes in a simulator, read from the episode record a robot policy returns as its
completion (``{"success": bool, "return": float, "chunks": int, ...}``), TRL's signature."""

from __future__ import annotations


def success(prompts, completions, **columns) -> list[float]:
    """1.0 for an episode that reached the task's success condition, else 0.0."""
    return [float(c["success"]) for c in completions]


def env_return(prompts, completions, **columns) -> list[float]:
    """The episode's summed environment reward."""
    return [float(c["return"]) for c in completions]
