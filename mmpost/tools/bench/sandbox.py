"""``mmpost bench-sandbox``: sandboxed chart executions per minute, and what attackers cost honest jobs.

1. Warm fork-server vs a fresh interpreter per job: the same chart programs executed through the
   sandbox (a warm zygote forks a confined child per job) and by starting ``python`` for each
   job (what a naive reward does: pay the interpreter and matplotlib import every time).
2. Honest throughput under attack: ``n`` honest chart programs alone, then the same programs
   interleaved with hostile ones (busy loops, sleepers, fork bombs, memory bombs, a fraction
   ``attackers`` of all jobs), on the same pool. The ratio is the honest jobs' throughput with
   attackers over without (issue 8 asks for at least 0.5).
3. The honest-job storm (:func:`storm`): honest programs in training-sized batches of
   ``chart_render`` calls, each batch also holding hostile jobs of every class; every honest score
   must equal the same program's score in a fresh sandbox alone (value, components, PNG bytes).
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
# One hostile job per class (issue 23): exhaust the machine, break or mislead the worker, leave state.
STORM_ATTACKS = {
    **ATTACKS,
    "deep_directories": "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n",
    "output_linked_to_dev_zero": "import os\nos.remove('output.txt')\nos.symlink('/dev/zero', 'output.txt')\nos._exit(1)\n",
    "output_linked_to_shadow": "import os\nos.remove('output.txt')\nos.symlink('/etc/shadow', 'output.txt')\nos._exit(1)\n",
    "sysv_shm": ("import ctypes\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\n"
                 "ctypes.memset(libc.shmat(libc.shmget(0x4d4d, 1 << 20, 0o1666), None, 0), 1, 1 << 20)\n"),
    "kill_everyone": "import os\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n        pass\n",
    "exhaust_fds": "files = [open('/dev/null') for _ in range(100000)]\n",
    "flood_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "read_home": "import os\nraise SystemExit(repr(os.listdir(os.path.expanduser('~'))))\n",
}
FRESH_SCRIPT = ("import sys, matplotlib\nmatplotlib.use('Agg')\n"
                "from mmpost.rewards.chart_figure import execute\nexecute(sys.stdin.read())\n")


def _difference(index: int, attacked: tuple, alone: tuple) -> str:
    """What differs between one honest job's score under attack and alone, in one line."""
    parts = [name for name, a, b in zip(("value", "components", "png"), attacked, alone) if a != b]
    return (f"job {index}: under attack {attacked[3]!r} (value {attacked[0]:.4f}), alone {alone[3]!r} "
            f"(value {alone[0]:.4f}); differs in {', '.join(parts) or 'nothing'}")


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


def run(n: int = 200, workers: int = 2, attackers: float = 0.25, fresh: int = 20, repeats: int = 3,
        storm_honest: int = 300) -> dict:
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
    results["storm"] = storm(storm_honest, workers=workers) if storm_honest else None
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
    if results["storm"]:
        st = results["storm"]
        print(f"  honest-job storm: {st['honest']} honest + {st['hostile']} hostile jobs ({st['classes']} classes) in "
              f"training-sized batches: {st['lost']} honest lost or changed, {st['honest_per_s']:.1f} honest/s under "
              f"attack, {st['infra_retries']} jobs retried after a worker failure")
    return results


def storm(n_honest: int = 300, batch: int = 64, hostile_share: float = 0.25, workers: int = 2,
          wall_seconds: float = 2.0) -> dict:
    """Honest chart programs scored through ``chart_render`` in batches of ``batch`` completions
    (a training step's rollout), a ``hostile_share`` of each batch being hostile jobs of every class
    of :data:`STORM_ATTACKS`; then the same honest programs scored alone in a fresh sandbox. Every
    honest score must match there (value, every component, PNG bytes); ``lost`` counts those that
    did not. Returns counts, seconds and honest jobs per second under attack."""
    from mmpost.rewards.chart_render import ChartRender
    from mmpost.sandbox import Limits

    codes = [f"# storm {i}\n{code}" for i, code in enumerate(honest_programs(n_honest))]  # each new to every cache
    per_batch = batch - round(batch * hostile_share)
    attacks = list(STORM_ATTACKS.values())
    limits = Limits(wall_seconds=wall_seconds, cpu_seconds=max(1, int(wall_seconds) - 1))

    def score(reward, programs: list[str], hostile: int, offset: int) -> list[tuple]:
        completions = [f"```python\n{c}\n```" for c in programs] + \
            [f"```python\n{attacks[(offset + j) % len(attacks)]}\n```" for j in range(hostile)]
        refs = [c.split("\n", 1)[1] for c in programs] + [programs[0].split("\n", 1)[1]] * hostile
        scores = reward([[]] * len(completions), completions, code=refs)
        return [(scores[i], {k: v[i] for k, v in scores.components.items()}, scores.details[i]["png"],
                 scores.details[i]["reason"]) for i in range(len(programs))]

    attacked, alone = [], []
    reward = ChartRender(workers=workers, limits=limits)
    try:
        reward.sandbox  # started before the clock
        start = time.perf_counter()
        for i in range(0, n_honest, per_batch):
            attacked += score(reward, codes[i:i + per_batch], batch - per_batch, i)
        seconds = time.perf_counter() - start
        stats = dict(reward.sandbox.stats)
    finally:
        reward.close()
    reward = ChartRender(workers=workers, limits=limits)
    try:
        for i in range(0, n_honest, per_batch):
            alone += score(reward, codes[i:i + per_batch], 0, 0)
    finally:
        reward.close()
    lost = [i for i, (a, b) in enumerate(zip(attacked, alone)) if a[:3] != b[:3] or a[3] != "ok" or b[3] != "ok"]
    return {"honest": n_honest, "hostile": sum(batch - per_batch for _ in range(0, n_honest, per_batch)),
            "classes": len(attacks), "lost": len(lost),
            "first_lost": [_difference(i, attacked[i], alone[i]) for i in lost[:3]],
            "seconds": seconds, "honest_per_s": n_honest / seconds, "infra_retries": stats["infra_retries"]}
