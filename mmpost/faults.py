"""Crash injection for the resume tests: ``MMPOST_KILL_AT=POINT:N`` SIGKILLs this process the Nth
time it reaches ``POINT`` (``rl_sampling``: a group was just sampled; ``checkpoint_write``: a
checkpoint's file is written but not yet committed). Unset, :func:`reached` does nothing."""

from __future__ import annotations

import os
import signal
from collections import Counter

_counts: Counter = Counter()


def reached(point: str) -> None:
    spec = os.environ.get("MMPOST_KILL_AT", "")
    if not spec.startswith(point + ":"):
        return
    _counts[point] += 1
    if _counts[point] == int(spec.rsplit(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)
