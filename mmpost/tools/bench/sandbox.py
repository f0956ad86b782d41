"""``mmpost bench-sandbox``: sandboxed chart executions per minute, and what attackers cost honest jobs.

1. Warm fork-server vs a fresh interpreter per job: the same chart programs executed through the
   sandbox (a warm zygote forks a confined child per job) and by starting ``python`` for each
   job (what a naive reward does: pay the interpreter and matplotlib import every time).
2. Honest throughput under attack: ``n`` honest chart programs alone, then the same programs
   interleaved with hostile ones (busy loops, sleepers, fork bombs, memory bombs, a fraction
   ``attackers`` of all jobs), on the same pool. The ratio is the honest jobs' throughput with
   attackers over without (issue 8 asks for at least 0.5).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ATTACKS = {
    "busy_loop": "while True:\n    pass\n",
    "sleep": "import time\ntime.sleep(100)\n",
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory_bomb": "x = bytearray(16 << 30)\n",
}
FRESH_SCRIPT = ("import sys, matplotlib\nmatplotlib.use('Agg')\n"
                "from mmpost.rewards.chart_figure import execute\nexecute(sys.stdin.read())\n")


def honest_programs(n: int) -> list[str]:
    from mmpost.data.charts import chart_program

    return [chart_program(i)["code"] for i in range(n)]


def fresh_interpreter_seconds(codes: list[str]) -> float:
    """Seconds to execute ``codes`` one fresh ``python`` process each (no sandbox at all)."""
    start = time.perf_counter()
    for code in codes:
        subprocess.run([sys.executable, "-c", FRESH_SCRIPT], input=code.encode(), check=True,
                       capture_output=True)
    return time.perf_counter() - start


def honest_throughput(box, codes: list[str], attackers: float, seed: int = 0) -> tuple[float, int]:
    """Honest jobs per second (until the last honest job is done) with a fraction ``attackers``
    of hostile jobs interleaved; also how many honest jobs rendered fine."""
    rng = random.Random(seed)
    n_attack = round(len(codes) * attackers / (1 - attackers)) if attackers else 0
    jobs = [("honest", c) for c in codes] + [("attack", rng.choice(list(ATTACKS.values()))) for _ in range(n_attack)]
    rng.shuffle(jobs)
    finished: list[float] = []
    ok = 0
    start = time.perf_counter()

    def run(job):
        nonlocal ok
        kind, code = job
        reply = box.run(code)
        if kind == "honest":
            finished.append(time.perf_counter() - start)
            ok += reply["status"] == "ok" and bool(reply["result"]) and reply["result"].get("ok", False)

    with ThreadPoolExecutor(max_workers=4 * box.capacity) as pool:
        list(pool.map(run, jobs))
    return len(codes) / max(finished), ok


def run(n: int = 200, workers: int = 2, attackers: float = 0.25, fresh: int = 20, repeats: int = 3) -> dict:
    """All measurements as a dict (medians over ``repeats``, alternating the conditions)."""
    from statistics import median

    from mmpost.rewards.chart_render import RUNNER
    from mmpost.sandbox import Sandbox

    codes = honest_programs(n)
    results: dict = {"n": n, "workers": workers, "attackers": attackers}
    with Sandbox(RUNNER, workers=workers) as box:
        results["capabilities"] = box.capabilities
        box.map(codes[: workers * 2])  # warm-up
        alone, mixed, ok = [], [], []
        for _ in range(repeats):
            alone.append(honest_throughput(box, codes, 0.0)[0])
            rate, good = honest_throughput(box, codes, attackers)
            mixed.append(rate)
            ok.append(good)
            print(f"  honest jobs/s alone {alone[-1]:.1f}, with {attackers:.0%} attackers {mixed[-1]:.1f}", flush=True)
        sample = codes[:fresh]
        start = time.perf_counter()
        box.map(sample)
        warm = time.perf_counter() - start
    cold = fresh_interpreter_seconds(sample)
    results.update(
        executions_per_min=median(alone) * 60, honest_per_s_alone=median(alone), honest_per_s_attacked=median(mixed),
        attacked_ratio=median(mixed) / median(alone), honest_ok_under_attack=min(ok),
        warm_seconds_per_job=warm / len(sample), fresh_interpreter_seconds_per_job=cold / len(sample),
        warm_speedup=cold / warm)
    print(f"sandbox ({workers} workers; {results['capabilities']}):\n"
          f"  executions/min (honest, alone)        {results['executions_per_min']:.0f}\n"
          f"  honest throughput with {attackers:.0%} attackers {results['attacked_ratio']:.2f} x alone "
          f"({results['honest_ok_under_attack']}/{n} honest renders ok)\n"
          f"  warm fork-server vs fresh interpreter {results['warm_speedup']:.1f} x faster "
          f"({results['warm_seconds_per_job'] * 1000:.0f} ms vs {results['fresh_interpreter_seconds_per_job'] * 1000:.0f} ms per job, "
          f"{workers} workers vs one process at a time)")
    return results
