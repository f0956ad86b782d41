"""A stand-in trainer for the sandbox attack tests: scores completions through ``chart_render`` as
training does (``score_rollout`` on a rollout whose column ``code`` is the reference), from
whatever directory and environment the test starts it in (copied there and run as a script, so its
folder and working directory are on ``sys.path`` as a user's training script's would be).

stdin: ``{"gold": CODE, "groups": [[completion, ...], ...], "workers": N, "wall": S}``; each group is
scored as one RL group. stdout: one JSON object with, per completion, its value, components and
reason, and the sandbox's counters after each group.
"""

import json
import sys

import torch

from mmpost.rewarding import score_rollout
from mmpost.rewards.chart_render import ChartRender
from mmpost.sandbox import Limits
from mmpost.types import Rollout


class Capture:
    """The reward as training calls it, keeping its last details (the reasons samples.jsonl records)."""

    def __init__(self, reward):
        self.reward, self.details = reward, []

    def __call__(self, prompts, completions, **columns):
        scores = self.reward(prompts, completions, **columns)
        self.details = scores.details
        return scores


def main() -> None:
    job = json.load(sys.stdin)
    reward = ChartRender(workers=job.get("workers", 2), limits=Limits(wall_seconds=job.get("wall", 3.0), cpu_seconds=2))
    capture = Capture(reward)
    out = {"groups": [], "capabilities": reward.sandbox.capabilities, "zygotes": [w.process.pid for w in reward.sandbox._workers]}
    for group in job["groups"]:
        n = len(group)
        rollout = Rollout(logprobs=torch.zeros(n, 1), mask=torch.ones(n, 1), group=torch.zeros(n, dtype=torch.long),
                          outputs=group, prompts=[[]] * n, columns={"code": [job["gold"]] * n}, actions=None)
        score_rollout(rollout, {"chart_render": capture}, {"chart_render": 1.0})
        out["groups"].append({
            "values": rollout.reward_components["chart_render"],
            "components": {k: v for k, v in rollout.reward_components.items() if k != "chart_render"},
            "reasons": [str(d["reason"]) for d in capture.details],
            "pngs": [d["png"] for d in capture.details],
            "stats": dict(reward.sandbox.stats),
        })
    reward.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
