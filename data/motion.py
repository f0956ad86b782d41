"""Seeded short clips of moving shapes with multiple-choice questions (video_qa; VideoRFT's task shape).

A clip is ``FRAMES`` frames of ``SIDE`` x ``SIDE`` pixels: a plain light background, one or two
large coloured shapes and, per question type, one event to reason about over time:

- ``direction``: one shape slides left, right, up or down ("Which way does the red circle move?");
- ``order``: two shapes appear one after the other ("Which shape appears first?");
- ``count``: a shape blinks on one to three times ("How many times does the blue square appear?");
- ``speed``: a shape crosses most of the frame or only a little ("Does the green triangle move fast or slow?").

Each clip also has a ``caption`` (what happens, in the words a reasoning trace would use), the
text the semantic-consistency reward compares with the frames. Held-out clips use seeds the
training split never draws (new shapes, colours, positions, paths and timings in combination).
Out-of-distribution clips (``ood``) draw every shape smaller than any trained (``OOD_SIZES``) and
move the shape of a direction question at a speed never trained (``OOD_STEP``, between slow and fast).

The scenes are deliberately plain: with four similar backgrounds, a still distractor and 12-18 px
shapes, the tiny models trained from scratch here stayed at the input-blind accuracy (README,
"video_qa"); on this plain version the default model learns all four question types.
"""

from __future__ import annotations

import random

from mmpost.data.splits import split_seeds  # noqa: F401 (re-exported)

SIDE = 84
FRAMES = 8
SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40)}
BACKGROUND = (235, 235, 235)
SIZES = (20, 28)  # shape sizes in pixels
OOD_SIZES = (12, 16)  # never trained
OOD_STEP = (3.0, 4.5)  # pixels a frame of a direction clip's shape: trained ones move 6-7.2
QUESTION_TYPES = ("direction", "order", "count", "speed")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _object(rng: random.Random, used: set, sizes: tuple = SIZES) -> dict:
    while True:
        color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        if (color, shape) not in used:
            used.add((color, shape))
            return {"color": color, "shape": shape, "size": rng.randint(*sizes)}


def video(seed: int, split: str = "train") -> dict:
    """One clip's recipe: ``{"seed", "qtype", "question", "choices", "answer", "caption", "tracks", "background"}``.

    ``tracks`` give every object's ``(x, y)`` top-left corner per frame, or ``None`` where it is
    hidden; :func:`render` draws them.
    """
    rng = random.Random(seed)
    ood = split == "ood"
    sizes = OOD_SIZES if ood else SIZES
    qtype = QUESTION_TYPES[rng.randrange(len(QUESTION_TYPES))]
    used: set = set()
    target = _object(rng, used, sizes)
    name = f"the {target['color']} {target['shape']}"
    size = target["size"]
    still = lambda: [(rng.randint(0, SIDE - SIZES[1]), rng.randint(0, SIDE - SIZES[1]))] * FRAMES  # noqa: E731
    if qtype in ("direction", "speed"):
        direction = rng.choice(sorted(DIRECTIONS)) if qtype == "direction" else rng.choice(["left", "right"])
        fast = rng.random() < 0.5 if qtype == "speed" else True
        step = rng.uniform(6, 7.2) if fast else rng.uniform(1, 2)  # fast: across most of the frame
        if ood and qtype == "direction":  # the same draw, rescaled into the never-trained speeds
            step = OOD_STEP[0] + (step - 6) / 1.2 * (OOD_STEP[1] - OOD_STEP[0])
        dx, dy = DIRECTIONS[direction]
        travel = step * (FRAMES - 1)
        x0 = SIDE - size - 2 - travel if dx > 0 else 2 + travel if dx < 0 else rng.uniform(2, SIDE - size - 2)
        y0 = SIDE - size - 2 - travel if dy > 0 else 2 + travel if dy < 0 else rng.uniform(2, SIDE - size - 2)
        if dx == 0:
            x0 = rng.uniform(2, SIDE - size - 2)
        if dy == 0:
            y0 = rng.uniform(2, SIDE - size - 2)
        if qtype == "speed" and not fast:  # a slow shape can start anywhere its short path fits
            x0 = rng.uniform(2 + travel, SIDE - size - 2 - travel)
        track = [(round(x0 + dx * step * t), round(y0 + dy * step * t)) for t in range(FRAMES)]
        tracks = [dict(target, track=track)]
        if qtype == "direction":
            question, choices, answer = f"Which way does {name} move?", sorted(DIRECTIONS), direction
            caption = f"{name} moves {direction}."
        else:
            speed = "fast" if fast else "slow"
            question, choices, answer = f"Does {name} move fast or slow?", ["fast", "slow"], speed
            caption = f"{name} moves {speed} to the {direction}."
    elif qtype == "order":
        other = _object(rng, used, sizes)
        first_at, second_at = rng.randint(0, 2), rng.randint(4, 6)
        a, b = (target, other) if rng.random() < 0.5 else (other, target)
        place = still()
        tracks = [dict(a, track=[p if t >= first_at else None for t, p in enumerate(place)])]
        place = still()
        tracks.append(dict(b, track=[p if t >= second_at else None for t, p in enumerate(place)]))
        names = [f"the {o['color']} {o['shape']}" for o in (a, b)]
        question, choices, answer = "Which shape appears first?", sorted(names), names[0]
        caption = f"{names[0]} appears, then {names[1]} appears."
    else:
        count = rng.randint(1, 3)
        shown = rng.sample(range(0, FRAMES, 2), count)  # one-frame blinks on even frames: always a gap between
        place = still()[0]
        track = [place if t in shown else None for t in range(FRAMES)]
        tracks = [dict(target, track=track)]
        word = {1: "once", 2: "twice", 3: "three times"}[count]
        question, choices, answer = f"How many times does {name} appear?", ["1", "2", "3"], str(count)
        caption = f"{name} appears {word}."
    rng.shuffle(choices)
    return {"seed": seed, "qtype": qtype, "question": question, "choices": choices, "answer": answer,
            "caption": caption, "tracks": tracks, "background": BACKGROUND}


def render(record: dict) -> list:
    """The clip's frames as ``FRAMES`` RGB ``PIL.Image`` s."""
    from PIL import Image, ImageDraw

    frames = []
    for t in range(FRAMES):
        image = Image.new("RGB", (SIDE, SIDE), tuple(record["background"]))
        draw = ImageDraw.Draw(image)
        for o in record["tracks"]:
            if o["track"][t] is None:
                continue
            x, y = o["track"][t]
            box = [x, y, x + o["size"] - 1, y + o["size"] - 1]
            color = COLORS[o["color"]]
            if o["shape"] == "circle":
                draw.ellipse(box, fill=color)
            elif o["shape"] == "square":
                draw.rectangle(box, fill=color)
            else:
                draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=color)
        frames.append(image)
    return frames


def as_image(frame):
    """A frame as an RGB ``PIL.Image``: PIL images pass through, ``[3, H, W]`` tensors in 0..255 (what
    qwen-vl-utils' ``fetch_video`` returns) are converted."""
    from PIL import Image

    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    return Image.fromarray(frame.permute(1, 2, 0).clamp(0, 255).byte().numpy())
