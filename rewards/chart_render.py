"""``chart_render``: render generated chart code in the sandbox and compare it with the reference.

Design after ChartMimic's low-level metrics (text, layout, chart type, colour F1s) and the
rendering-similarity reward in ``shared/reference/rewards.md``, with changes that give RL a
graded, discriminative signal: colours use a CIEDE2000 tolerance of 50 instead of 100 (see
:func:`color_similarity`); data series are compared after resampling and range normalisation,
with a penalty for a wrong point count, instead of by exact equality; matching uses Hungarian
assignment instead of ChartMimic's permutations.

Reward = 0 when there is no code, the code raises, times out or draws no figure; ``None`` when the
reference itself fails (the sample is not scorable); otherwise

    0.1 + 0.9 * (0.25 type + 0.15 text + 0.05 layout + 0.20 color + 0.25 data + 0.10 ssim)

Each component is in [0, 1] and is logged separately. All comparisons run here, in the trainer
process, on validated plain data; the untrusted program only ever sees its own figure.
"""

from __future__ import annotations

import base64
import difflib
import io
import math
import re
from collections import Counter

import numpy as np

from mmpost.registry import reward
from mmpost.rewards.text import completion_text

WEIGHTS = {"type": 0.25, "text": 0.15, "layout": 0.05, "color": 0.20, "data": 0.25, "ssim": 0.10}
COMPONENTS = ("exec", *WEIGHTS)
RESAMPLE_POINTS = 32
COLOR_TOLERANCE = 50.0  # CIEDE2000 distance at which two colours stop counting as similar
MAX_ITEMS = 200
RENDER_CACHE = 4096  # programs whose render is kept (an RL group often repeats a program)
RUNNER = "mmpost.rewards.chart_figure"
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The last fenced code block of a completion, or the whole completion when it has none."""
    blocks = _CODE_BLOCK.findall(completion)
    return (blocks[-1] if blocks else completion).strip()


# ---------------------------------------------------------------- validation of sandbox output


def _number_list(value, limit: int) -> list[float]:
    if not isinstance(value, list):
        raise ValueError("expected a list of numbers")
    out = [float(v) for v in value[:limit] if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [v for v in out if math.isfinite(v)]


def validate_features(data) -> dict:
    """Check and normalise the JSON a sandbox child sent; raise ``ValueError`` when malformed."""
    if not isinstance(data, dict):
        raise ValueError("features are not a dict")
    series = []
    for s in data.get("series", [])[:MAX_ITEMS]:
        if not isinstance(s, dict) or not isinstance(s.get("kind"), str):
            raise ValueError("malformed series")
        colors = [c for c in s.get("colors", [])[:MAX_ITEMS]
                  if isinstance(c, str) and re.fullmatch(r"#[0-9a-f]{6}", c)]
        series.append({"kind": s["kind"][:20], "colors": colors,
                       "x": _number_list(s.get("x", []), 2000), "y": _number_list(s.get("y", []), 2000)})
    texts = [t[:200] for t in data.get("texts", [])[:MAX_ITEMS] if isinstance(t, str)]
    layout = [tuple(int(v) for v in cell[:6]) for cell in data.get("layout", [])[:MAX_ITEMS]  # (tuples: already checked)
              if isinstance(cell, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in cell)]
    return {"series": series, "texts": texts, "layout": layout}


def decode_png(data: str, max_side: int = 4096) -> np.ndarray:
    """Decode a base64 PNG from the sandbox into a grayscale uint8 array (compact for caching)."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    if max(image.size) > max_side:
        raise ValueError(f"render too large: {image.size}")
    return np.asarray(image.convert("L"), dtype=np.uint8)


# ---------------------------------------------------------------- components (all in [0, 1])


def f1(correct: float, n_gen: int, n_gold: int) -> float:
    """F1 of ``correct`` matches among ``n_gen`` generated and ``n_gold`` gold items (both empty: 1)."""
    if n_gen == 0 and n_gold == 0:
        return 1.0
    if n_gen == 0 or n_gold == 0 or correct <= 0:
        return 0.0
    precision, recall = correct / n_gen, correct / n_gold
    return 2 * precision * recall / (precision + recall)


def multiset_f1(gen: list, gold: list) -> float:
    """F1 of two multisets matched exactly (ChartMimic's chart-type and layout rule)."""
    correct = sum((Counter(gen) & Counter(gold)).values())
    return f1(correct, len(gen), len(gold))


def _assign(similarity: np.ndarray) -> float:
    """Total similarity of the best one-to-one assignment (Hungarian)."""
    if similarity.size == 0:
        return 0.0
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-similarity)
    return float(similarity[rows, cols].sum())


def normalize_text(text: str) -> str:
    return " ".join(text.replace("$", "").split()).lower()


def text_score(gen: list[str], gold: list[str]) -> float:
    """F1 of texts, a pair matching when equal or ``difflib`` ratio >= 0.9 after normalisation."""
    gen, gold = [normalize_text(t) for t in gen], [normalize_text(t) for t in gold]
    sim = np.array([[1.0 if a == b or difflib.SequenceMatcher(None, a, b).ratio() >= 0.9 else 0.0
                     for b in gold] for a in gen]).reshape(len(gen), len(gold))
    return f1(_assign(sim), len(gen), len(gold))


def _lab(hex_colors: list[str]) -> np.ndarray:
    from skimage.color import rgb2lab

    rgb = np.array([[int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)] for h in hex_colors])
    return rgb2lab(rgb.reshape(1, -1, 3)).reshape(-1, 3)


def color_similarity(gen: list[str], gold: list[str]) -> np.ndarray:
    """``max(0, 1 - CIEDE2000 / COLOR_TOLERANCE)`` for every pair of hex colours.

    ChartMimic divides by 100, which still gives red vs blue (dE 53) a similarity of 0.47, so a
    blind guess of any colour earns about half the credit. With a tolerance of 50, unrelated named
    colours score ~0 while near ones keep partial credit (red/orange dE 34 -> 0.33).
    """
    if not gen or not gold:
        return np.zeros((len(gen), len(gold)))
    from skimage.color import deltaE_ciede2000

    a, b = _lab(gen), _lab(gold)
    delta = deltaE_ciede2000(a[:, None, :].repeat(len(b), 1), b[None, :, :].repeat(len(a), 0))
    return np.clip(1.0 - delta / COLOR_TOLERANCE, 0.0, 1.0)


def color_score(gen: list[dict], gold: list[dict]) -> float:
    """Colour F1: colours are grouped by series kind and matched within a kind by assignment."""
    total, n_gen, n_gold = 0.0, 0, 0
    kinds = {s["kind"] for s in gen} | {s["kind"] for s in gold}
    for kind in kinds:
        a = [c for s in gen if s["kind"] == kind for c in s["colors"]]
        b = [c for s in gold if s["kind"] == kind for c in s["colors"]]
        total += _assign(color_similarity(a, b))
        n_gen, n_gold = n_gen + len(a), n_gold + len(b)
    return f1(total, n_gen, n_gold)


def resample(y: list[float], points: int = RESAMPLE_POINTS) -> np.ndarray:
    """Linear resampling of a series (in drawing order) onto ``points`` evenly spaced positions."""
    if len(y) == 1:
        return np.full(points, y[0])
    return np.interp(np.linspace(0, len(y) - 1, points), np.arange(len(y)), np.asarray(y))


def series_similarity(gen: dict, gold: dict) -> float:
    """Graded closeness of two series of the same kind, in [0, 1].

    ``(1 - mean |resampled gen - resampled gold| / gold range) * min(n) / max(n)``: the shape term
    gives credit for values that are close, the count term for the right number of points.
    """
    if gen["kind"] != gold["kind"] or not gen["y"] or not gold["y"]:
        return 0.0
    a, b = resample(gen["y"]), resample(gold["y"])
    scale = max(float(np.ptp(b)), float(np.abs(b).max()) * 0.1, 1e-9)
    shape = max(0.0, 1.0 - float(np.abs(a - b).mean()) / scale)
    count = min(len(gen["y"]), len(gold["y"])) / max(len(gen["y"]), len(gold["y"]))
    return shape * count


def data_score(gen: list[dict], gold: list[dict]) -> float:
    """Series matched one-to-one by assignment on :func:`series_similarity`; F1 over series."""
    sim = np.array([[series_similarity(a, b) for b in gold] for a in gen]).reshape(len(gen), len(gold))
    return f1(_assign(sim), len(gen), len(gold))


def ssim_score(gen: np.ndarray, gold: np.ndarray) -> float:
    """Structural similarity of two uint8 grayscale renders (gen resized to gold's size), clamped to [0, 1]."""
    from skimage.metrics import structural_similarity
    from skimage.transform import resize

    gen, gold = gen.astype(np.float64) / 255.0, gold.astype(np.float64) / 255.0
    if gen.shape != gold.shape:
        gen = resize(gen, gold.shape, anti_aliasing=True)
    return float(np.clip(structural_similarity(gen, gold, data_range=1.0), 0.0, 1.0))


def compare(gen: dict, gold: dict, gen_image: np.ndarray, gold_image: np.ndarray) -> dict[str, float]:
    """All components and the weighted ``total`` for one executed program against its reference."""
    scores = {
        "type": multiset_f1([s["kind"] for s in gen["series"]], [s["kind"] for s in gold["series"]]),
        "text": text_score(gen["texts"], gold["texts"]),
        "layout": multiset_f1(gen["layout"], gold["layout"]),
        "color": color_score(gen["series"], gold["series"]),
        "data": data_score(gen["series"], gold["series"]),
        "ssim": ssim_score(gen_image, gold_image),
    }
    scores["total"] = 0.1 + 0.9 * sum(WEIGHTS[k] * scores[k] for k in WEIGHTS)
    return scores


# ---------------------------------------------------------------- the reward function


class Scores(list):
    """A list of rewards (TRL's return type) that also carries per-component lists for logging."""

    def __init__(self, values, components: dict[str, list] | None = None, details: list | None = None):
        super().__init__(values)
        self.components = components or {}
        self.details = details or []


class ChartRender:
    """The ``chart_render`` reward: ``(prompts, completions, *, code, **columns) -> Scores``.

    ``code`` is the dataset's reference program (one per completion, as TRL passes columns).
    Reference renders are cached by program text. The sandbox pool starts on first use.

    >>> reward = ChartRender()                                         # doctest: +SKIP
    >>> reward(["..."], ["```python\\nimport matplotlib.pyplot as plt\\nplt.plot([1,2])\\n```"],
    ...        code=["import matplotlib.pyplot as plt\\nplt.plot([1,2])\\n"])   # doctest: +SKIP
    [1.0]
    """

    def __init__(self, workers: int = 2, limits=None, backend: str = "local"):
        self.workers, self.backend = workers, backend
        self.limits = limits  # mmpost.sandbox.Limits; None = its defaults
        self._sandbox = None
        self._gold_cache: dict[str, tuple[dict, np.ndarray, str] | None] = {}
        self._render_cache: dict[str, tuple[dict, np.ndarray, str] | str] = {}

    def configure(self, cfg) -> None:
        """The run's sandbox pool: ``sandbox_workers`` fork-servers, here or as Ray actors (``sandbox_backend``)."""
        self.workers, self.backend = cfg.sandbox_workers, cfg.sandbox_backend

    @property
    def sandbox(self):
        if self._sandbox is None:
            if self.backend == "ray":
                from mmpost.ray_backends import RaySandbox as Sandbox
            else:
                from mmpost.sandbox import Sandbox
            self._sandbox = Sandbox(RUNNER, workers=self.workers, limits=self.limits)
        return self._sandbox

    def render(self, codes: list[str]) -> list[tuple[dict, np.ndarray, str] | str]:
        """Execute programs in the sandbox: ``(features, gray image, base64 png)`` each, or a
        failure reason (a string). Identical programs run once (renders are deterministic: the
        sandbox seeds ``random`` and ``numpy``), and recent renders are kept in an LRU cache,
        since a group often repeats a program. Only outcomes the program itself determined are
        cached (its figure, its own error, an oversized result): a timeout on a busy machine or
        a failure of the sandbox is tried again the next time the program comes."""
        unique = [c for c in dict.fromkeys(codes) if c not in self._render_cache]
        fresh = dict(zip(unique, self._execute(unique) if unique else []))
        for code, (rendered, determined) in fresh.items():
            if determined:
                self._render_cache[code] = rendered
        while len(self._render_cache) > RENDER_CACHE:
            self._render_cache.pop(next(iter(self._render_cache)))
        for code in codes:  # most recently used last
            if code in self._render_cache:
                self._render_cache[code] = self._render_cache.pop(code)
        return [fresh[c][0] if c in fresh else self._render_cache[c] for c in codes]

    def execute(self, codes: list[str]) -> list[tuple[dict, np.ndarray, str] | str]:
        """Run programs in the sandbox without caching (see :meth:`render`)."""
        return [rendered for rendered, _ in self._execute(codes)]

    def _execute(self, codes: list[str]) -> list[tuple[tuple[dict, np.ndarray, str] | str, bool]]:
        """Each program's render or failure reason, and whether the program alone determined it."""
        out = []
        for reply in self.sandbox.map(codes):
            result = reply.get("result")
            determined = reply["status"] in ("ok", "oversize")  # not: timeout, crash, the sandbox's own failure
            if reply["status"] != "ok" or not isinstance(result, dict):
                out.append((f"{reply['status']}: {reply.get('error', '')}".strip(), determined))
            elif not result.get("ok"):
                out.append((str(result.get("error", "error"))[:300], determined))
            else:
                try:
                    png = result.get("png", "")
                    out.append(((validate_features(result.get("features")), decode_png(png), png), determined))
                except (ValueError, TypeError, OSError) as error:
                    out.append((f"invalid result: {error}", determined))
        return out

    def add_reference(self, code: str, features: dict, png: str) -> None:
        """Prime the reference cache with a render made elsewhere (e.g. when the data was built)."""
        self._gold_cache[code] = (validate_features(features), decode_png(png), png)

    def gold(self, codes: list[str]) -> list[tuple[dict, np.ndarray, str] | None]:
        missing = list(dict.fromkeys(c for c in codes if c not in self._gold_cache))
        fresh = {}
        for code, (rendered, determined) in zip(missing, self._execute(missing) if missing else []):
            fresh[code] = rendered if isinstance(rendered, tuple) else None
            if determined:  # kept for good, not in the LRU
                self._gold_cache[code] = fresh[code]
        return [self._gold_cache[c] if c in self._gold_cache else fresh[c] for c in codes]

    def __call__(self, prompts, completions, *, code, **columns) -> Scores:
        texts = [completion_text(c) for c in completions]
        programs = [extract_code(t) for t in texts]
        golds = self.gold(list(code))
        rendered = self.render([p if p else "raise SystemExit('no code')" for p in programs])
        values, details = [], []
        components = {name: [] for name in COMPONENTS}
        for program, gold, result in zip(programs, golds, rendered):
            if gold is None:
                scores, reason = None, "reference failed"
            elif not program or not isinstance(result, tuple):
                scores = dict.fromkeys(WEIGHTS, 0.0) | {"total": 0.0, "exec": 0.0}
                reason = "no code" if not program else result
            else:
                scores = compare(result[0], gold[0], result[1], gold[1]) | {"exec": 1.0}
                reason = "ok"
            values.append(None if scores is None else scores["total"])
            for name in COMPONENTS:
                components[name].append(None if scores is None else scores[name])
            details.append({"reason": reason, "png": result[2] if isinstance(result, tuple) else None})
        return Scores(values, components, details)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


chart_render = reward("chart_render")(ChartRender())
