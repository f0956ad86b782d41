"""Data hooks: which rows a stage trains on, and in which order (one method per file).

Before a stage (:func:`stage_rows`): ``mix`` adds shares of other splits (DMT, :mod:`.mixing`),
``curate`` keeps the prompts the start model does worst on (Carve3D, :mod:`.curation`), ``donod``
keeps the best share by DONOD (:mod:`.pruning`). Inside an ``sft`` stage's steps
(:mod:`mmpost.stages.sft`): ``select`` picks each batch from a larger pool (UDS, :mod:`.selection`)
and ``middo`` rewrites rows in rounds (Middo, :mod:`.refinement`). Their knobs are the stage's
:class:`Rows` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmpost.policy import TokenDemos
from mmpost.types import StageSection


@dataclass
class Rows(StageSection):
    """A stage's data hooks (``sft.rows.donod=0.3``, ``rl.rows.curate=[64,16]``)."""

    mix: dict = field(default_factory=dict)  # {split: k}: add a share k of each split's rows to this stage's (DMT)
    curate: list = field(default_factory=list)  # [candidates, keep] train on the keep rows of the first
    #   candidates with the lowest mean reward under the start-of-stage model (Carve3D); [] = all rows
    donod: float = 0.0  # keep this share of the stage's rows, ranked by DONOD (TOPSIS over DON, NOD); 0 = all
    select: str = ""  # sft: "uds" picks each batch from select_pool x batch_size rows (utility x diversity)
    select_pool: int = 4  # candidates per trained row when select is on
    middo: list = field(default_factory=list)  # sft: [every, m] diagnose and rewrite the rows every N steps (Middo)
    # demonstrations without their reasoning, the answer alone (the task's answer_only; "Debunk the Myth of
    # SFT Generalization" compares SFT with and without reasoning demonstrations)
    answer_only: bool = False

    def __post_init__(self):
        if any(not isinstance(k, str) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for k, v in self.mix.items()):
            raise ValueError(f"rows.mix maps split names to shares in [0, 1], e.g. {{three_step: 0.0625}}; "
                             f"got {self.mix}")
        if self.middo and (len(self.middo) != 2 or int(self.middo[0]) < 1):
            raise ValueError(f"rows.middo is [every, m] (a round every N >= 1 steps, thresholds mean - m std), "
                             f"got {self.middo}")
        self.middo = [int(self.middo[0]), float(self.middo[1])] if self.middo else []
        if not 0 <= self.donod <= 1:
            raise ValueError(f"rows.donod is the share of rows kept, in (0, 1]; got {self.donod}")
        if self.curate and (len(self.curate) != 2 or not 0 < int(self.curate[1]) <= int(self.curate[0])):
            raise ValueError(f"rows.curate is [candidates, keep] with 0 < keep <= candidates, got {self.curate}")
        self.curate = [int(v) for v in self.curate]
        if self.select not in ("", "uds"):
            raise ValueError(f"rows.select is '' or 'uds', got {self.select!r}")

    def check(self, stage) -> None:
        if self.select and stage.kind != "sft":
            raise ValueError(f"rows.select={self.select!r} picks SFT batches: it needs kind 'sft', not {stage.kind!r}")

    def needs_reference(self, stage) -> bool:
        return stage.kind == "sft" and bool(self.middo)  # Middo's loss under the start-of-stage model

    def requires(self, stage) -> list[tuple[type, str]]:
        token_hooks = {"select": self.select, "donod": self.donod, "middo": self.middo}  # they score token demos
        return [(TokenDemos, f"rows.{name}") for name, on in token_hooks.items() if on]

    def rows_per_batch(self, batch_size: int) -> int:
        """Rows drawn for a step: a selection hook picks ``batch_size`` of them."""
        return batch_size * (self.select_pool if self.select else 1)


def stage_rows(stage, task, rows: dict, policy, rewards: dict, weights: dict, seed: int,
               run_dir: Path) -> list[dict]:
    """The rows ``stage`` trains on: its split, plus shares of others (``mix``, DMT), their answers alone
    (``answer_only``), then narrowed
    to the prompts the model does worst on (``curate``, Carve3D) or the best share by DONOD
    (``donod``). Choices that depend on the model are recorded in the run directory (resume)."""
    from mmpost.data_hooks.curation import lowest_reward_rows
    from mmpost.data_hooks.mixing import mixed_rows
    from mmpost.data_hooks.pruning import donod_rows

    hooks = stage.rows
    for split in (stage.data, *hooks.mix):
        if split not in rows:
            rows[split] = task.rows(split)
    train_rows = mixed_rows(rows[stage.data], rows, hooks.mix, seed) if hooks.mix else rows[stage.data]
    if hooks.answer_only:
        train_rows = [task.answer_only(row) for row in train_rows]
    if stage.kind == "rl" and hooks.curate:
        train_rows = lowest_reward_rows(policy, train_rows, rewards, weights, *hooks.curate,
                                        stage.sampling.group_size, stage.batch_size,
                                        run_dir / f"curated-{stage.name}.json")
    if hooks.donod:
        train_rows = donod_rows(policy, train_rows, hooks.donod, stage.optim.lr, stage.batch_size,
                                run_dir / f"donod-{stage.name}.json")
    return train_rows
