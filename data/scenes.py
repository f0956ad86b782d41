"""Seeded scenes of coloured shapes with a referring expression and the box it refers to (grounding).

A scene is a ``SIDE`` x ``SIDE`` image: a background (flat, gradient, stripes or noise), 1-4
shapes (circle, square, triangle, diamond) in five colours and two sizes, and sometimes small
clutter specks. One shape is the target; the expression names it with as few words as make it
unique among the shapes: ``"the red triangle"``, ``"the small red triangle"`` (another red
triangle is large), or ``"the red triangle left of the circle"`` (two red triangles of one size,
told apart by a unique other shape on one side). Boxes are ``[x1, y1, x2, y2]`` in pixels,
continuous-area convention (a shape covering columns 10..19 has x1 = 10, x2 = 20).

Unseen combinations: the colour/shape pairs in ``NOVEL_PAIRS`` are never the target of a training
expression (they still appear as distractors). Every held-out scene with an even seed has a
novel-pair target, so the held-out split measures both interpolation and composition.
"""

from __future__ import annotations

import random

from mmpost.data.splits import split_seeds  # noqa: F401 (re-exported)

SIDE = 112
SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40),
          "purple": (150, 60, 190)}
SIZES = {"small": (14, 20), "large": (26, 36)}
NOVEL_PAIRS = (("blue", "triangle"), ("green", "circle"), ("yellow", "square"), ("purple", "diamond"))


def _place(rng: random.Random, placed: list[list[int]], size: int) -> list[int] | None:
    """A box of side ``size`` inside the image that overlaps no placed box (with a 2-pixel gap)."""
    for _ in range(50):
        x, y = rng.randint(1, SIDE - size - 1), rng.randint(1, SIDE - size - 1)
        box = [x, y, x + size, y + size]
        if all(box[2] + 2 <= b[0] or b[2] + 2 <= box[0] or box[3] + 2 <= b[1] or b[3] + 2 <= box[1] for b in placed):
            return box
    return None


def _side_of(target: dict, other: dict) -> str | None:
    """Where ``target`` lies relative to ``other`` when the boxes do not overlap along that axis."""
    t, o = target["box"], other["box"]
    if t[2] <= o[0]:
        return "left of"
    if t[0] >= o[2]:
        return "right of"
    if t[3] <= o[1]:
        return "above"
    if t[1] >= o[3]:
        return "below"
    return None


def _expression(objects: list[dict], target: dict) -> str | None:
    """The shortest unique description of ``target`` among ``objects``, or None when there is none."""
    same = [o for o in objects if o is not target and (o["color"], o["shape"]) == (target["color"], target["shape"])]
    name = f"{target['color']} {target['shape']}"
    if not same:
        return f"the {name}"
    if all(o["size"] != target["size"] for o in same):
        return f"the {target['size']} {name}"
    for anchor in objects:  # a uniquely-shaped other object on a side no look-alike shares
        if anchor is target or sum(o["shape"] == anchor["shape"] for o in objects) > 1:
            continue
        side = _side_of(target, anchor)
        if side and all(_side_of(o, anchor) != side for o in same):
            return f"the {name} {side} the {anchor['shape']}"
    return None


def scene(seed: int, split: str = "train") -> dict:
    """One scene: ``{"seed", "objects", "target", "expression", "box", "novel", "background"}``.

    Objects are dicts of shape, colour, size word and pixel box; ``target`` indexes ``objects``.
    Training scenes never target a ``NOVEL_PAIRS`` combination; held-out scenes with an even seed
    and every out-of-distribution (``ood``) scene always do.
    """
    rng = random.Random(seed)
    want_novel = (split == "heldout" and seed % 2 == 0) or split == "ood"
    while True:
        objects: list[dict] = []
        for _ in range(rng.randint(1, 4)):
            size_word = rng.choice(tuple(SIZES))
            box = _place(rng, [o["box"] for o in objects], rng.randint(*SIZES[size_word]))
            if box is not None:
                objects.append({"shape": rng.choice(SHAPES), "color": rng.choice(tuple(COLORS)), "size": size_word,
                                "box": box})
        if want_novel and rng.random() < 0.7:  # make a novel pair likely to be present
            objects[0].update(zip(("color", "shape"), rng.choice(NOVEL_PAIRS)))
        if rng.random() < 0.3 and len(objects) >= 2:  # a look-alike makes size or position matter
            objects[1].update(color=objects[0]["color"], shape=objects[0]["shape"])
        candidates = [i for i, o in enumerate(objects)
                      if ((o["color"], o["shape"]) in NOVEL_PAIRS) == want_novel and _expression(objects, o)]
        if candidates:
            break
    index = rng.choice(candidates)
    background = rng.choice(("flat", "gradient", "stripes", "noise"))
    return {"seed": seed, "objects": objects, "target": index, "expression": _expression(objects, objects[index]),
            "box": objects[index]["box"], "novel": want_novel, "background": background,
            "clutter": rng.randint(0, 6), "tint": [rng.randint(150, 245) for _ in range(3)]}


def render(record: dict):
    """The scene as an RGB ``PIL.Image`` (deterministic in the record's seed)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(record["seed"])
    tint = np.array(record["tint"], dtype=np.float32)
    kind = record["background"]
    if kind == "flat":
        pixels = np.broadcast_to(tint, (SIDE, SIDE, 3)).copy()
    elif kind == "gradient":
        ramp = np.linspace(0.75, 1.1, SIDE, dtype=np.float32)[:, None, None]
        pixels = np.broadcast_to(tint * ramp, (SIDE, SIDE, 3)).copy()
    elif kind == "stripes":
        stripes = ((np.arange(SIDE) // 8) % 2).astype(np.float32)[None, :, None] * 25
        pixels = np.broadcast_to(tint - stripes, (SIDE, SIDE, 3)).copy()
    else:
        pixels = tint + rng.normal(0, 12, (SIDE, SIDE, 3)).astype(np.float32)
    image = Image.fromarray(pixels.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(record["clutter"]):  # small grey specks: visual noise, never a nameable shape
        x, y = rng.integers(0, SIDE - 4, 2)
        grey = int(rng.integers(60, 200))
        draw.rectangle([int(x), int(y), int(x) + 2, int(y) + 2], fill=(grey, grey, grey))
    for o in record["objects"]:
        x1, y1, x2, y2 = o["box"]
        color = COLORS[o["color"]]
        # PIL's outlines include the end pixel, so the drawn extent is [x1, x2 - 1] = box in area terms
        if o["shape"] == "circle":
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
        elif o["shape"] == "square":
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
        elif o["shape"] == "triangle":
            draw.polygon([((x1 + x2 - 1) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=color)
        else:
            cx, cy = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2
            draw.polygon([(cx, y1), (x2 - 1, cy), (cx, y2 - 1), (x1, cy)], fill=color)
    return image
