"""Seeded generator of matplotlib charts and the code that draws them (chart2code).

Each sample is a short, self-contained matplotlib program. The chart image is made by running that
program (in the sandbox, like any other code), so image and code can never disagree.

Sample ``i`` of a split is drawn from ``random.Random(split_offset + i)``: the train split uses
seeds ``0..n-1`` and the held-out split seeds from ``HELDOUT_SEED_OFFSET`` on, so the two never
share a seed (and so never share a program except by coincidence of the random draws).
"""

from __future__ import annotations

import random

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
