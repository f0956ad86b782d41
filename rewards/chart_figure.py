"""Sandbox runner for chart code: execute a program, then describe the figure it left behind.

This module runs inside sandbox children (see :mod:`mmpost.sandbox`). It introspects the final
matplotlib ``Figure`` (``plt.gcf()``), not a call log and not stdout, so any way of drawing counts
(``plt.bar``, ``ax.add_patch``, seaborn, pandas). It returns plain JSON data only; every score is
computed by the trainer process (:mod:`mmpost.rewards.chart_render`), so nothing the untrusted
code patches here can reach the comparison.
"""

from __future__ import annotations

import base64
import importlib.util
import io

MAX_ITEMS = 200  # cap on series, texts, colours per figure (the parent caps again)
MAX_POINTS = 2000  # cap on points per series
MAX_PIXELS = 4000  # largest figure side accepted, in pixels
WARM_UP = "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.title('warm-up')\n"
# The sandbox's start-up probe: an honest program using what honest chart programs import (the
# standard library's data modules, numpy, and pandas / seaborn / scipy where installed), run under
# the final confinement, so the sandbox never confines them away.
PROBE_IMPORTS = ("statistics", "csv", "json", "math", "collections", "datetime", "decimal", "fractions",
                 "itertools", "functools", "random", "re", "string", "textwrap", "colorsys", "io", "dataclasses",
                 "calendar", "numpy", "matplotlib.pyplot")
OPTIONAL_IMPORTS = ("pandas", "seaborn", "scipy.stats")
PROBE_CODE = "".join(f"import {name}\n" for name in PROBE_IMPORTS) + "".join(
    f"import {name}\n" for name in OPTIONAL_IMPORTS if importlib.util.find_spec(name.split(".")[0])) + (
    "import matplotlib.pyplot as plt\nplt.plot([1, 2], [statistics.mean([3, 5]), 4])\nplt.title('probe')\n")
RC = {"figure.figsize": (2.0, 2.0), "figure.dpi": 56, "savefig.dpi": 56, "font.size": 6}


def prepare() -> None:
    """Import and warm matplotlib once in the fork-server (font cache, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy  # noqa: F401  - programs import it; pay the cost once

    execute(WARM_UP)  # (not PROBE_CODE: the probe must import, in a child, what the zygote has not loaded)
    plt.close("all")


def execute(code: str) -> dict:
    """Run ``code`` and return ``{"features": ..., "png": base64}`` of its current figure.

    Raises on any error of the program, when it draws no figure, or when the figure is too big.
    """
    import random

    import matplotlib
    import matplotlib.pyplot as plt
    import numpy

    matplotlib.rcdefaults()
    matplotlib.rcParams.update(RC)
    plt.close("all")
    random.seed(0)  # programs that draw random data render the same every time (renders are cached)
    numpy.random.seed(0)
    plt.show = lambda *args, **kwargs: None
    namespace = {"__name__": "__main__"}
    exec(compile(code, "<completion>", "exec"), namespace)  # noqa: S102 - we are the sandbox child
    if not plt.get_fignums():
        raise RuntimeError("no figure")
    fig = plt.gcf()
    width, height = fig.get_size_inches() * RC["savefig.dpi"]
    if max(width, height) > MAX_PIXELS:
        raise RuntimeError(f"figure too large ({width:.0f}x{height:.0f} px)")
    features = figure_features(fig)
    features["n_figures"] = len(plt.get_fignums())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=RC["savefig.dpi"])
    return {"features": features, "png": base64.b64encode(buffer.getvalue()).decode()}


def _hex(color) -> str:
    from matplotlib.colors import to_hex

    return to_hex(color, keep_alpha=False)


def _series_of_axes(ax) -> list[dict]:
    """One entry per drawn series: ``{"kind", "colors", "x", "y"}``."""
    from matplotlib.collections import PathCollection, PolyCollection
    from matplotlib.patches import Wedge

    series = []
    for line in ax.lines:
        xy = line.get_xydata()
        if len(xy) and line.get_visible():
            series.append({"kind": "line", "colors": [_hex(line.get_color())],
                           "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist()})
    for container in ax.containers:
        patches = [p for p in getattr(container, "patches", []) if p is not None]
        if not patches or type(container).__name__ != "BarContainer":
            continue
        horizontal = getattr(container, "orientation", "vertical") == "horizontal"
        if horizontal:
            pos = [p.get_y() + p.get_height() / 2 for p in patches]
            val = [p.get_width() for p in patches]
        else:
            pos = [p.get_x() + p.get_width() / 2 for p in patches]
            val = [p.get_height() for p in patches]
        widths = [p.get_height() if horizontal else p.get_width() for p in patches]
        # A histogram is a bar container whose bars touch: position step == bar width.
        touching = len(pos) > 1 and all(abs((b - a) - w) < 1e-6 * max(1.0, abs(w))
                                         for a, b, w in zip(pos, pos[1:], widths))
        kind = "hist" if touching and not horizontal else ("barh" if horizontal else "bar")
        series.append({"kind": kind, "colors": [_hex(patches[0].get_facecolor())], "x": pos, "y": val})
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        series.append({"kind": "pie", "colors": [_hex(w.get_facecolor()) for w in wedges],
                       "x": list(range(len(wedges))),
                       "y": [((w.theta2 - w.theta1) % 360 or 360) / 360 for w in wedges]})
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            offsets = coll.get_offsets()
            colors = coll.get_facecolors()
            series.append({"kind": "scatter", "colors": [_hex(colors[0])] if len(colors) else [],
                           "x": [float(v) for v in offsets[:, 0]], "y": [float(v) for v in offsets[:, 1]]})
        elif isinstance(coll, PolyCollection) and coll.get_paths():
            vertices = coll.get_paths()[0].vertices
            top: dict[float, float] = {}
            for x, y in vertices.tolist():
                top[x] = max(y, top.get(x, y))
            xs = sorted(top)
            colors = coll.get_facecolors()
            series.append({"kind": "area", "colors": [_hex(colors[0])] if len(colors) else [],
                           "x": xs, "y": [top[x] for x in xs]})
    for entry in series:
        entry["x"] = [float(v) for v in entry["x"][:MAX_POINTS]]
        entry["y"] = [float(v) for v in entry["y"][:MAX_POINTS]]
    return series[:MAX_ITEMS]


def _texts_of_axes(ax) -> list[str]:
    texts = [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    legend = ax.get_legend()
    if legend is not None:
        texts += legend.get_texts()
    return [t.get_text() for t in texts if t.get_visible() and t.get_text().strip()]


def figure_features(fig) -> dict:
    """Chart type, text, layout, colours and data of a figure, as JSON-serialisable data.

    Tick labels are excluded from the text (as ChartMimic does): they follow from the data.
    """
    axes = [ax for ax in fig.axes if ax.get_visible()]
    layout, series, texts = [], [], []
    for ax in axes:
        spec = ax.get_subplotspec()
        if spec is not None:
            grid = spec.get_gridspec()
            layout.append([grid.nrows, grid.ncols, spec.rowspan.start, spec.rowspan.stop,
                           spec.colspan.start, spec.colspan.stop])
        series += _series_of_axes(ax)
        texts += _texts_of_axes(ax)
    suptitle = fig._suptitle
    if suptitle is not None and suptitle.get_text().strip():
        texts.append(suptitle.get_text())
    texts += [t.get_text() for t in fig.texts if t.get_text().strip()]
    return {"layout": layout[:MAX_ITEMS], "series": series[:MAX_ITEMS], "texts": texts[:MAX_ITEMS]}
