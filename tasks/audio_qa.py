"""audio_qa: answer multiple-choice questions about a sound clip (R1-AQA: GRPO on AVQA, MMAU).

Data: seeded synthetic clips (:mod:`mmpost.data.sounds`: pitch comparison, beep counting, event
order, tone vs chord, vowel identity; the held-out split adds parameters outside the training
ranges), or a user's JSONL of ``{"audio": path, "question", "choices": [...], "answer"}`` (WAV files,
or any format ``soundfile`` reads, resampled to 16 kHz). Rewards as R1-AQA: ``choice_accuracy`` +
``answer_format`` (``<answer>...</answer>`` only). Metric: held-out ``choice_accuracy``. Default
model: a tiny Qwen2-Audio built offline (:mod:`mmpost.models.tiny_qwen2audio`). Default recipe: SFT
then GRPO; ``--recipe sft_only`` spends the same sample budget on SFT alone, for R1-AQA's
comparison (README, "audio_qa").

Input-blind baseline (``results.json`` -> ``blind``): the majority training answer per question
type, the best a model that never listens can do.
"""

from __future__ import annotations

from collections import Counter

from mmpost.config import DataConfig, EvalConfig, TrainConfig
from mmpost.stages.spec import Optim, Sampling, Stage
from mmpost.data.jsonl import DataError, media_path, read_jsonl
from mmpost.data.sounds import SAMPLE_RATE, clip, prompt_text, split_seeds, synthesize
from mmpost.data.splits import generating, split_user_rows
from mmpost.models.tiny_qwen2audio import cached_tiny_qwen2audio

TRAIN_SIZE = 4000


def make_row(audio, question: str, choices: list[str], answer: str, **columns) -> dict:
    options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return {"prompt": [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": f"{question} {options}"}]}],
            "audios": [audio], "completion": f"<answer>{answer}</answer>", "answer": answer, "choices": list(choices),
            **columns}


class AudioQA:
    """The audio_qa task: data, model, rewards, metric and default recipe."""

    name = "audio_qa"
    default_model = (  # `mmpost list models`
        "tiny Qwen2-Audio (audio encoder + LM, built offline); --model: a Qwen2-Audio-class directory / "
        "hub id")
    rewards = ["choice_accuracy", "answer_format"]
    metric = "choice_accuracy"
    breakdown = "qtype"  # held-out accuracy also per question type
    ood = "clips whose pitch, loudness and event lengths all lie outside the training ranges (half the held-out ones do)"
    solved_threshold = 1.0
    # R1-AQA's comparison: the second stage spends the GRPO stage's budget (steps x 64 completions)
    # on 64 demonstrations a step instead, at the SFT stage's final learning-rate scale
    recipes = {"sft_only": {"rl.kind": "sft", "rl.batch_size": 64, "rl.optim.lr": 1e-4}}

    @staticmethod
    def default_config() -> TrainConfig:
        return TrainConfig(task="audio_qa", stages=[
            Stage(name="sft", kind="sft", steps=600, batch_size=32,
                  optim=Optim(lr=1e-3, schedule="cosine", warmup=0.05)),
            Stage(name="rl", kind="rl", steps=100, batch_size=8,
                  sampling=Sampling(group_size=8, max_new_tokens=12),
                  optim=Optim(lr=2e-5, schedule="constant")),
        ], data=DataConfig(train_size=TRAIN_SIZE, eval_size=200), eval=EvalConfig(batch_size=100),
            checkpoint_every=100)

    def __init__(self, cfg: TrainConfig, reward=None):
        self.cfg = cfg

    def model_path(self) -> str:
        """The user's ``--model`` or the cached tiny Qwen2-Audio (built on first use)."""
        if self.cfg.model:
            return self.cfg.model
        return str(cached_tiny_qwen2audio("tiny-qwen2audio-qa", self._corpus, vocab_size=300))

    def policy(self, device="cpu"):
        from mmpost.adapters.token_policy import TokenPolicy

        return TokenPolicy.for_run(self.model_path(), self.cfg, device)

    def _corpus(self) -> list[str]:
        records = [clip(s) for s in split_seeds("train", 500)]
        return [prompt_text(r) + "\n<answer>" + r["answer"] + "</answer>" for r in records]

    def rows(self, split: str) -> list[dict]:
        """Rows of ``split``: the question prompt, the waveform, the ``answer`` and ``choices``."""
        if self.cfg.data.path:
            return split_user_rows(self.cfg.data, split, lambda path: load_user_rows(
                path, self.cfg.data.skip_bad_rows, self.cfg.data.columns))
        size = self.cfg.data.train_size if split == "train" else self.cfg.data.eval_size
        rows = []
        for seed in generating(split_seeds(split, size), f"{self.name} {split} rows"):
            record = clip(seed, split)
            rows.append(make_row(synthesize(record), record["question"], record["choices"], record["answer"],
                                 qtype=record["qtype"], shifted=record["shifted"], seed=seed))
        return rows

    def blind_completions(self, train_rows: list[dict], rows: list[dict]) -> list[str]:
        """The input-blind answer for each of ``rows``: the majority training answer of its question."""
        by_question: dict[str, Counter] = {}
        for r in train_rows:
            by_question.setdefault(_question(r), Counter())[r["answer"]] += 1
        overall = Counter(r["answer"] for r in train_rows).most_common(1)[0][0]
        return [f"<answer>{by_question[_question(r)].most_common(1)[0][0] if _question(r) in by_question else overall}"
                "</answer>" for r in rows]


def _question(row: dict) -> str:
    return row.get("qtype") or row["prompt"][0]["content"][-1]["text"]


def load_user_rows(path: str, skip_bad_rows: bool = False, columns: list[str] | None = None) -> list[dict]:
    """Rows from a JSONL of ``{"audio", "question", "choices", "answer"}`` (audio paths relative to the file)."""
    import numpy as np

    def convert(r: dict) -> dict:
        if not isinstance(r["choices"], list) or r["answer"] not in r["choices"]:
            raise DataError(f"{r['source']}: 'answer' must be one of 'choices'")
        audio_path = media_path(r["audio"], path)
        try:
            import soundfile

            wave, rate = soundfile.read(audio_path, dtype="float32", always_2d=True)
        except Exception as error:  # soundfile raises its own error types
            raise DataError(f"{r['source']}: audio {audio_path} failed to decode ({error})") from None
        wave = wave.mean(axis=1)
        if rate != SAMPLE_RATE:  # linear resampling: enough for the 16 kHz feature extractor
            wave = np.interp(np.arange(0, len(wave), rate / SAMPLE_RATE), np.arange(len(wave)), wave)
        return make_row(wave.astype(np.float32), r["question"], r["choices"], r["answer"], source=r["source"])

    return list(read_jsonl(path, required={"audio": str, "question": str, "choices": list, "answer": str}, skip_bad_rows=skip_bad_rows, convert=convert,
                           columns=columns))
