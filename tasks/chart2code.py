"""chart2code: read a chart image, write the matplotlib code that draws it.

Data: the seeded generator in :mod:`mmpost.data.charts` (rendered once through the sandbox and
cached under ``MMPOST_HOME/data``), or a user's JSONL of ``{"image": path, "code": str}``.
Reward: ``chart_render``. Default model: a tiny Qwen2-VL built offline. Default recipe: SFT,
then GRPO (settings from ``shared/reference/chart2code_feasibility.md``).
"""

from __future__ import annotations

import base64
import io
import json

from mmpost.checkpoint import write_atomic
from mmpost.config import DataConfig, TrainConfig
from mmpost.stages.spec import KL, Optim, Sampling, Stage
from mmpost.data.charts import chart_program, render_programs, split_seeds
from mmpost.data.jsonl import read_jsonl
from mmpost.data.splits import split_user_rows
from mmpost.models.tiny_qwen2vl import cached_tiny_qwen2vl, mmpost_home

PROMPT = "Write matplotlib code that reproduces this chart."
DATA_VERSION = "v1"
TRAIN_SIZE = 3000  # default training charts; the tokenizer is trained on exactly these programs


def completion_for(code: str) -> str:
    """The demonstration text the model learns to write for ``code``."""
    return f"```python\n{code}```"


def make_row(image, code: str, **columns) -> dict:
    return {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
            "images": [image], "completion": completion_for(code), "code": code, **columns}


class Chart2Code:
    """The chart2code task: data, model, rewards, metric and default recipe."""

    name = "chart2code"
    default_model = (  # `mmpost list models`
        "tiny Qwen2-VL (112-px images, vocab 1024, built offline); --model: any image-text-to-text "
        "directory / hub id")
    solved_threshold = 0.8  # a chart counts as solved (ReLIFT, rejection sampling) from this reward
    rewards = ["chart_render"]
    ood = "charts with more data than any trained: 9-12 points, 6-slice pies, 17-24-value histograms in 7-9 bins"
    metric = "chart_render"

    @staticmethod
    def default_config() -> TrainConfig:
        return TrainConfig(task="chart2code", stages=[
            Stage(name="sft", kind="sft", steps=3200, batch_size=16,
                  optim=Optim(lr=1e-3, schedule="cosine", warmup=0.03)),
            Stage(name="rl", kind="rl", steps=200, batch_size=4,
                  sampling=Sampling(group_size=8, temperature=1.0, max_new_tokens=72),
                  optim=Optim(lr=3e-5, schedule="constant"),
                  kl=KL(coef=0.0)),
        ], data=DataConfig(train_size=TRAIN_SIZE, eval_size=100))

    def __init__(self, cfg: TrainConfig, reward=None):
        self.cfg = cfg
        self.reward = reward  # the chart_render instance, primed with reference renders

    def model_path(self) -> str:
        """The user's ``--model`` or the cached tiny Qwen2-VL (built on first use)."""
        if self.cfg.model:
            return self.cfg.model
        return str(cached_tiny_qwen2vl("tiny-qwen2vl-chart2code", self._corpus, preset="tiny",
                                       vocab_size=1024, image_side=112, seed=0))

    def policy(self, device="cpu"):
        """The model to train, as a :class:`~mmpost.adapters.token_policy.TokenPolicy`."""
        from mmpost.adapters.token_policy import TokenPolicy

        return TokenPolicy.for_run(self.model_path(), self.cfg, device)

    def _corpus(self) -> list[str]:
        codes = [completion_for(chart_program(s)["code"]) for s in split_seeds("train", TRAIN_SIZE)]
        return codes + [PROMPT] * 50

    # ------------------------------------------------------------------ data

    def rows(self, split: str) -> list[dict]:
        """Rows of ``split`` ("train" or "heldout"): TRL-style prompt/images/completion + columns."""
        if self.cfg.data.path:
            def read(path: str) -> list[dict]:
                return [make_row(r["image_obj"], r["code"], source=r["source"])
                        for r in read_jsonl(path, required={"image": str, "code": str},
                                            skip_bad_rows=self.cfg.data.skip_bad_rows, columns=self.cfg.data.columns)]
            return split_user_rows(self.cfg.data, split, read)
        size = self.cfg.data.train_size if split == "train" else self.cfg.data.eval_size
        return [self._synthetic_row(record) for record in self._render(split_seeds(split, size))]

    def _render(self, seeds) -> list[dict]:
        """Records of rendered programs, cached one JSON file per seed (code, features, PNG)."""
        from tqdm.auto import tqdm

        cache = mmpost_home() / "data" / f"chart2code-{DATA_VERSION}"
        cache.mkdir(parents=True, exist_ok=True)
        missing = [chart_program(s) for s in seeds if not (cache / f"{s}.json").exists()]
        with tqdm(total=len(missing), desc="rendering charts", unit="chart", disable=not missing) as bar:
            for program, (features, png) in zip(missing, render_programs([p["code"] for p in missing])):
                record = {**program, "features": features, "png": png}
                write_atomic(cache / f"{program['seed']}.json", lambda tmp: tmp.write_text(json.dumps(record)))
                bar.update()
        return [json.loads((cache / f"{s}.json").read_text()) for s in seeds]

    def _synthetic_row(self, record: dict) -> dict:
        from PIL import Image

        image = Image.open(io.BytesIO(base64.b64decode(record["png"]))).convert("RGB")
        self.reward.add_reference(record["code"], record["features"], record["png"])
        return make_row(image, record["code"], chart_type=record["chart_type"], seed=record["seed"])

