"""Seeded generator of matplotlib charts and the code that draws them (chart2code).

Each sample is a short, self-contained matplotlib program. The chart image is made by running that
program with the sandbox runner's own ``execute`` (:func:`render_programs`), so image and code can
never disagree and a reward render of the same program gives the same figure.

Sample ``i`` of a split is drawn from ``random.Random(split_offset + i)``: the train split uses
seeds ``0..n-1`` and the held-out split seeds from ``HELDOUT_SEED_OFFSET`` on, so the two never
share a seed (and so never share a program except by coincidence of the random draws).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator

from mmpost.data.splits import HELDOUT_SEED_OFFSET, OOD_SEED_OFFSET, split_seeds  # noqa: F401 (re-exported)

CHART_TYPES = ("line", "multiline", "bar", "grouped_bar", "barh", "scatter", "pie", "hist", "area")
COLORS = ("red", "blue", "green", "orange", "purple", "black")
TITLE_WORDS = ("Sales", "Revenue", "Traffic", "Growth", "Users", "Costs", "Profit", "Score",
               "Visits", "Orders", "Monthly", "Weekly", "Daily", "Annual", "Total", "Average",
               "Energy", "Rainfall")
X_LABELS = ("Month", "Week", "Day", "Year", "Step", "Item")
Y_LABELS = ("Value", "Count", "Amount", "Rate", "Level", "Units")
SERIES_LABELS = ("A", "B", "2023", "2024", "North", "South")
STYLES = ("pyplot", "axes")


def chart_program(seed: int) -> dict:
    """Return ``{"code", "chart_type", "seed"}`` for one randomly drawn chart.

    The program uses either the pyplot state machine or the ``fig, ax`` API (chosen at random),
    integer data 1..9 with 3..8 points, a 1-3 word title, axis labels and named colours.
    Out-of-distribution seeds (from ``OOD_SEED_OFFSET``) draw more data than any trained: 9..12 points
    (pie: 6 slices, not 3..5; histogram: 17..24 values in 7..9 bins, not 10..16 in 3..6).
    """
    rng = random.Random(seed)
    ood = seed >= OOD_SEED_OFFSET
    kind = rng.choice(CHART_TYPES)
    style = rng.choice(STYLES)
    n = rng.randint(9, 12) if ood else rng.randint(3, 8)
    values = lambda k=n: [rng.randint(1, 9) for _ in range(k)]  # noqa: E731
    colors = rng.sample(COLORS, 3)
    on = "ax." if style == "axes" else "plt."
    lines = ["import matplotlib.pyplot as plt"]
    if kind == "grouped_bar":
        lines.append("import numpy as np")
    if style == "axes":
        lines.append("fig, ax = plt.subplots()")

    if kind in ("line", "bar", "barh", "scatter", "area"):
        lines += [f"x = {list(range(1, n + 1))}", f"y = {values()}"]
        call = {"line": "plot", "bar": "bar", "barh": "barh", "scatter": "scatter",
                "area": "fill_between"}[kind]
        lines.append(f"{on}{call}(x, y, color='{colors[0]}')")
    elif kind == "multiline":
        labels = rng.sample(SERIES_LABELS, 2)
        lines += [f"x = {list(range(1, n + 1))}", f"y1 = {values()}", f"y2 = {values()}"]
        lines.append(f"{on}plot(x, y1, color='{colors[0]}', label='{labels[0]}')")
        lines.append(f"{on}plot(x, y2, color='{colors[1]}', label='{labels[1]}')")
        lines.append(f"{on}legend()")
    elif kind == "grouped_bar":
        labels = rng.sample(SERIES_LABELS, 2)
        lines += [f"x = np.arange({n})", f"a = {values()}", f"b = {values()}"]
        lines.append(f"{on}bar(x - 0.2, a, width=0.4, color='{colors[0]}', label='{labels[0]}')")
        lines.append(f"{on}bar(x + 0.2, b, width=0.4, color='{colors[1]}', label='{labels[1]}')")
        lines.append(f"{on}legend()")
    elif kind == "pie":
        k = rng.randint(6, 6) if ood else rng.randint(3, 5)
        lines += [f"sizes = {values(k)}", f"{on}pie(sizes, colors={rng.sample(COLORS, k)})"]
    elif kind == "hist":
        lines += [f"data = {values(rng.randint(17, 24) if ood else rng.randint(10, 16))}",
                  f"{on}hist(data, bins={rng.randint(7, 9) if ood else rng.randint(3, 6)}, color='{colors[0]}')"]

    title = " ".join(rng.sample(TITLE_WORDS, rng.randint(1, 3)))
    if style == "axes":
        lines.append(f"ax.set_title('{title}')")
    else:
        lines.append(f"plt.title('{title}')")
    if kind != "pie":
        xl, yl = rng.choice(X_LABELS), rng.choice(Y_LABELS)
        if style == "axes":
            lines += [f"ax.set_xlabel('{xl}')", f"ax.set_ylabel('{yl}')"]
        else:
            lines += [f"plt.xlabel('{xl}')", f"plt.ylabel('{yl}')"]
    return {"code": "\n".join(lines) + "\n", "chart_type": kind, "seed": seed}


def render_programs(codes: list[str], workers: int | None = None) -> Iterator[tuple[dict, str]]:
    """Render the generator's programs: ``(features, base64 PNG)`` for each, in order, as they finish.

    These programs are this module's own, not a model's, so they run in ``workers`` plain worker
    processes (default: every CPU this process may use) through the function a sandbox child runs
    (:func:`mmpost.rewards.chart_figure.execute`: same settings, same seeds), which gives byte-identical
    records without the sandbox's fork and confinement per job (46 ms of CPU per chart in the sandbox
    against 30 ms here). Model-written code never comes here: it runs only in the sandbox
    (``chart_render``). A program that fails is this generator's bug: ``RuntimeError`` naming it.
    """
    from mmpost.rewards.chart_render import validate_features
    from mmpost.sandbox.protocol import read_message, write_message

    if not codes:
        return
    workers = min(workers or _usable_cpus(), len(codes))
    # fresh interpreters (not forks of a trainer that may hold torch's threads); worker i renders
    # codes i, i + workers, ..., so reading the replies in order keeps every worker busy
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    # (cwd "/": `-m` imports the installed mmpost, never a checkout in the trainer's working directory)
    procs = [subprocess.Popen([sys.executable, "-m", "mmpost.data.charts"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, cwd="/") for _ in range(workers)]
    try:
        for i, proc in enumerate(procs):
            write_message(proc.stdin, {"codes": codes[i::workers]})
            proc.stdin.close()
        for k, code in enumerate(codes):
            reply = read_message(procs[k % workers].stdout)
            if reply is None or "error" in reply:
                reason = reply["error"] if reply else f"the render worker exited ({procs[k % workers].wait()})"
                raise RuntimeError(f"the chart generator's program failed: {reason}\n{code}")
            yield validate_features(reply["features"]), reply["png"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # (a container's or taskset's share, not the machine's)
    except AttributeError:  # no affinity API on this OS
        return os.cpu_count() or 1


def _serve_renders() -> None:
    """A :func:`render_programs` worker: one message of codes in, one reply per code out."""
    from mmpost.rewards import chart_figure
    from mmpost.sandbox.protocol import read_message, write_message

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what a program prints goes to stderr, not into the replies
    chart_figure.prepare()
    for code in read_message(sys.stdin.buffer)["codes"]:
        try:
            reply = chart_figure.execute(code)
        except Exception as error:  # noqa: BLE001 - reported with the program by the parent
            reply = {"error": f"{type(error).__name__}: {error}"}
        write_message(replies, reply)


if __name__ == "__main__":
    _serve_renders()
