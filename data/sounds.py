"""Seeded synthetic audio clips with multiple-choice questions (audio_qa; R1-AQA's task shape).

A clip is ``SECONDS`` of 16 kHz mono float audio built from tones, chords, beeps, noise bursts
and vowel-like formant sounds, over a little background noise. Each clip answers one question
type: which of two tones is higher (``pitch``), how many beeps (``count``), which came first, the
tone or the noise (``order``), one tone or a chord (``chord``), which vowel (``vowel``). Options are
shuffled per clip and labelled (A), (B), ...; the answer is the option text.

Held-out clips come from seeds the training split never draws; every held-out clip with an even
seed also uses sound parameters outside the training ranges (other base frequencies, beep
lengths, loudness), so the split measures generalisation and not only new noise draws.
"""

from __future__ import annotations

import math
import random

from mmpost.data.splits import split_seeds  # noqa: F401 (re-exported)

SAMPLE_RATE = 16000
SECONDS = 2.0
QUESTION_TYPES = ("pitch", "count", "order", "chord", "vowel")
VOWELS = {"a": (730, 1090), "i": (270, 2290), "u": (300, 870)}  # first two formants (Hz), adult male averages
QUESTIONS = {
    "pitch": "Which tone is higher?",
    "count": "How many beeps are there?",
    "order": "Which came first?",
    "chord": "Is this a single tone or a chord?",
    "vowel": "Which vowel is sung?",
}


def _tone(freq: float, start: float, length: float, amplitude: float) -> list[tuple]:
    return [("sine", freq, start, length, amplitude)]


def clip(seed: int, split: str = "train") -> dict:
    """One clip's recipe: ``{"seed", "qtype", "question", "choices", "answer", "events", "shifted"}``.

    ``events`` are ``(kind, parameter, start s, length s, amplitude)`` tuples; :func:`synthesize`
    turns them into the waveform.
    """
    rng = random.Random(seed)
    # parameters outside the training ranges: half the held-out clips, every out-of-distribution one
    shifted = (split == "heldout" and seed % 2 == 0) or split == "ood"
    qtype = QUESTION_TYPES[rng.randrange(len(QUESTION_TYPES))]
    base = rng.uniform(500, 700) if shifted else rng.choice([rng.uniform(200, 480), rng.uniform(720, 1000)])
    loud = rng.uniform(0.15, 0.25) if shifted else rng.uniform(0.3, 0.6)
    events: list[tuple] = []
    if qtype == "pitch":
        ratio = rng.uniform(1.3, 2.0)
        higher_first = rng.random() < 0.5
        first, second = (base * ratio, base) if higher_first else (base, base * ratio)
        events = _tone(first, 0.2, 0.6, loud) + _tone(second, 1.1, 0.6, loud)
        choices, answer = ["the first", "the second"], "the first" if higher_first else "the second"
    elif qtype == "count":
        n = rng.randint(1, 4)
        length = rng.uniform(0.08, 0.12) if shifted else rng.uniform(0.14, 0.22)
        gap = (SECONDS - 0.2) / n
        events = [e for i in range(n) for e in _tone(base * 2, 0.1 + i * gap + rng.uniform(0, 0.1), length, loud)]
        choices, answer = ["1", "2", "3", "4"], str(n)
    elif qtype == "order":
        tone_first = rng.random() < 0.5
        a, b = (0.2, 1.1) if tone_first else (1.1, 0.2)
        events = _tone(base, a, 0.6, loud) + [("noise", 0.0, b, 0.6, loud)]
        choices, answer = ["the tone", "the noise"], "the tone" if tone_first else "the noise"
    elif qtype == "chord":
        is_chord = rng.random() < 0.5
        events = _tone(base, 0.3, 1.4, loud * (0.6 if is_chord else 1.0))
        if is_chord:  # a major triad
            events += _tone(base * 5 / 4, 0.3, 1.4, loud * 0.6) + _tone(base * 3 / 2, 0.3, 1.4, loud * 0.6)
        choices, answer = ["a single tone", "a chord"], "a chord" if is_chord else "a single tone"
    else:
        vowel = rng.choice(sorted(VOWELS))
        pitch = rng.uniform(150, 200) if shifted else rng.uniform(100, 140)
        events = [("vowel", (pitch, *VOWELS[vowel]), 0.3, 1.4, loud)]
        choices, answer = sorted(VOWELS), vowel
    rng.shuffle(choices)
    return {"seed": seed, "qtype": qtype, "question": QUESTIONS[qtype], "choices": choices, "answer": answer,
            "events": events, "shifted": shifted, "noise": rng.uniform(0.005, 0.02)}


def synthesize(record: dict):
    """The clip as a float32 numpy waveform in [-1, 1] at ``SAMPLE_RATE`` (deterministic in the seed)."""
    import numpy as np

    rng = np.random.default_rng(record["seed"])
    n = int(SAMPLE_RATE * SECONDS)
    t = np.arange(n) / SAMPLE_RATE
    wave = rng.normal(0, record["noise"], n)
    for kind, parameter, start, length, amplitude in record["events"]:
        on = (t >= start) & (t < start + length)
        ramp = np.clip(np.minimum(t - start, start + length - t) / 0.01, 0, 1)  # 10 ms fades, no clicks
        if kind == "sine":
            signal = np.sin(2 * math.pi * parameter * t)
        elif kind == "noise":
            signal = rng.normal(0, 0.5, n)
        else:  # a vowel: a pulse train at the pitch shaped by two formant resonances
            pitch, f1, f2 = parameter
            signal = sum(np.sin(2 * math.pi * k * pitch * t) * (np.exp(-((k * pitch - f1) / 120) ** 2)
                                                                + 0.7 * np.exp(-((k * pitch - f2) / 160) ** 2))
                         for k in range(1, int(3500 / pitch)))
            signal = signal / (np.abs(signal).max() + 1e-9)
        wave = wave + on * ramp * amplitude * signal
    return np.clip(wave, -1, 1).astype(np.float32)


def prompt_text(record: dict) -> str:
    """The question with its lettered options."""
    options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(record["choices"]))
    return f"{record['question']} {options}"
