"""arithmetic: multi-step word problems with a verifiable answer (text only, GSM8K-shaped).

The text task for methods that need a checkable answer rather than a picture: RLVR, ReFT, SPIN,
DPO from reward-ranked pairs, rejection sampling. Data: :mod:`mmpost.data.arithmetic` (seeded);
reward ``answer_match`` (ReFT's ``answer_partial`` also registered). Default model: the same tiny
Qwen2-VL family as chart2code, with a tokenizer trained on these problems, used without images,
so the one TokenPolicy serves text and vision alike. Default recipe: SFT then GRPO.
"""

from __future__ import annotations

import random

from mmpost.config import DataConfig, EvalConfig, TrainConfig
from mmpost.stages.spec import Optim, Sampling, Stage
from mmpost.data.arithmetic import HELDOUT_OFFSET, OOD_OPERATIONS, problem, refine_problem, split_seeds
from mmpost.data.jsonl import read_jsonl
from mmpost.data.splits import split_user_rows
from mmpost.models.tiny_qwen2vl import cached_tiny_qwen2vl
from mmpost.rewards.answer import line_results

TRAIN_SIZE = 4000
OPERATION_SPLITS = {"two_step": 2, "three_step": 3}  # split -> operations (solution lines before "#### N")


def make_row(question: str, solution: str, answer: str, **columns) -> dict:
    """A chat row; ``steps``: the worked lines' results (for the step-level reward ``step_match``)."""
    return {"prompt": [{"role": "user", "content": question}], "completion": solution, "answer": str(answer),
            "steps": line_results(solution), **columns}


class Arithmetic:
    """The arithmetic task: data, model, rewards, metric and default recipe."""

    name = "arithmetic"
    default_model = (  # `mmpost list models`
        "tiny Qwen2-VL, text prompts (vocab 400, built offline); --model: any causal LM or VLM directory "
        "/ hub id")
    rewards = ["answer_match"]
    metric = "answer_match"
    solved_threshold = 1.0  # a sample counts as solved when its answer is right
    abilities = ("three_step", "two_step")  # specialist, general: row splits for data-mixture recipes (DMT)
    breakdown = "operations"  # held-out accuracy is also reported per number of operations (2, 3)
    ood = "problems of 4 operations (training and held-out problems have 2 or 3)"

    @staticmethod
    def default_config() -> TrainConfig:
        return TrainConfig(task="arithmetic", stages=[
            # 1200 SFT steps leave the tiny model at ~25% held-out accuracy (2000 reach ~95%), so the
            # post-SFT methods have room to show what they add (README, "arithmetic")
            Stage(name="sft", kind="sft", steps=1200, batch_size=32,
                  optim=Optim(lr=2e-3, schedule="cosine", warmup=0.05)),
            # the longest worked solution is 34 tokens + EOS
            Stage(name="rl", kind="rl", steps=150, batch_size=8,
                  sampling=Sampling(group_size=8, max_new_tokens=40),
                  optim=Optim(lr=2e-5, schedule="constant")),
        ], data=DataConfig(train_size=TRAIN_SIZE, eval_size=200), eval=EvalConfig(batch_size=100),
            checkpoint_every=100)

    def __init__(self, cfg: TrainConfig, reward=None):
        self.cfg = cfg

    def model_path(self) -> str:
        if self.cfg.model:
            return self.cfg.model
        corpus = [text for s in split_seeds("train", TRAIN_SIZE) for text in problem(s).values() if isinstance(text, str)]
        return str(cached_tiny_qwen2vl("tiny-qwen2vl-arithmetic", lambda: corpus, preset="tiny", vocab_size=400,
                                       image_side=56, seed=0))

    def policy(self, device="cpu"):
        from mmpost.adapters.token_policy import TokenPolicy

        return TokenPolicy.for_run(self.model_path(), self.cfg, device)

    @staticmethod
    def refine(row: dict, axis: str, rng) -> dict | None:
        """Middo's rewrites by rule (:func:`mmpost.data.arithmetic.refine_problem`): a simpler problem,
        a repaired worked solution, or a neighbour; None for a question of another shape."""
        new = refine_problem(row["prompt"][0]["content"], axis, rng)
        return {**row, **make_row(new["question"], new["solution"], new["answer"])} if new else None

    @staticmethod
    def answer_only(row: dict) -> dict:
        """The demonstration without its worked lines: ``#### N`` alone."""
        return {**row, "completion": f"#### {row['answer']}"}

    def rows(self, split: str) -> list[dict]:
        """Rows of ``split``: a chat prompt, the worked ``completion`` and the ``answer`` column.
        ``two_step`` / ``three_step``: the training problems with that many operations (two
        abilities for data-mixture recipes such as DMT). ``ood``: problems of 4 operations."""
        if split in OPERATION_SPLITS:
            return [r for r in self.rows("train") if r["completion"].count("\n") == OPERATION_SPLITS[split]]
        if self.cfg.data.path:  # a user's JSONL of {"question", "solution", "answer"}
            def read(path: str) -> list[dict]:
                return [make_row(r["question"], r["solution"], r["answer"])
                        for r in read_jsonl(path, required={"question": str, "solution": str, "answer": (str, int, float)},
                                            skip_bad_rows=self.cfg.data.skip_bad_rows, columns=self.cfg.data.columns)]
            return split_user_rows(self.cfg.data, split, read)
        size = self.cfg.data.train_size if split == "train" else self.cfg.data.eval_size
        problems = [problem(s, OOD_OPERATIONS if split == "ood" else 0) for s in split_seeds(split, size)]
        rows = [make_row(**p, operations=p["solution"].count("\n")) for p in problems]
        if split == "train" and self.cfg.data.noise:  # noisy demonstrations, for data-quality methods
            rng = random.Random(f"noise:{self.cfg.seed}")
            for i in rng.sample(range(size), round(self.cfg.data.noise * size)):
                rows[i]["completion"] = problem(HELDOUT_OFFSET - 1 - i)["solution"]  # another problem's
        return rows
