"""Issue 23's classes of attack, each through ``chart_render`` as training calls it (``score_rollout``
in a process started like a user's training script, from its HOME), each attack in an RL group with
an honest program that must still score and must reach a worker (a fresh nonce, counted).

Classes: reading the trainer's files (its working directory's runs/, HOME, MMPOST_HOME, any file
the trainer can read); making the unconfined worker open what a job planted (links in place of the
job's output); breaking the worker (trees no recursive cleanup survives; a worker killed under
honest jobs); failures cached as the program's score; state left for a later job (SysV IPC, /tmp,
/dev/shm); honest programs failing for the sandbox's own reasons (stdlib and pandas imports); the two
gold paths disagreeing. Afterwards no process, directory, cgroup or IPC object of the run is left.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

GOLD = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b', 'c'], [3, 1, 2], color='tab:blue')\nplt.title('Sales')\n"
SHM_KEY = 0x4D4D5053


def fenced(program: str) -> str:
    return f"```python\n{program}\n```"


def honest(nonce: str) -> str:
    """The gold chart with a comment no earlier program had: it must run in a worker, not come from a cache."""
    return fenced(f"# {nonce}\n{GOLD}")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A trainer's world: HOME with a world-readable canary and the runs/ of its working directory,
    MMPOST_HOME, and a secret any process of the trainer's user can read. Every canary holds a
    unique marker, so finding it in any reason means it was read."""
    root = tmp_path_factory.mktemp("trainer")
    home, mmhome = root / "home", root / "mmpost-home"
    run = home / "runs" / "chart2code-20261204"
    marks = {name: f"CANARY-{name}-{uuid.uuid4().hex}" for name in
             ("metrics", "config", "checkpoint", "home", "mmpost_home", "secret")}
    paths = {"metrics": run / "metrics.jsonl", "config": run / "config.yaml",
             "checkpoint": run / "checkpoints" / "s00-000010" / "state.pt", "home": home / ".netrc",
             "mmpost_home": mmhome / "models" / "token.txt", "secret": root / "secret.txt"}
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(marks[name] + "\n")
        path.chmod(0o644)
    return {"root": root, "home": home, "mmhome": mmhome, "run": run, "paths": paths, "marks": marks}


def run_trainer(trainer, groups: list[list[str]], workers: int = 2) -> dict:
    """Score ``groups`` in a trainer process started from HOME (see ``trainer_driver.py``)."""
    script = trainer["home"] / "train.py"
    shutil.copy(Path(__file__).with_name("trainer_driver.py"), script)
    env = {**os.environ, "HOME": str(trainer["home"]), "MMPOST_HOME": str(trainer["mmhome"])}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, str(script)], cwd=trainer["home"], env=env, capture_output=True,
                            text=True, timeout=900, input=json.dumps({"gold": GOLD, "groups": groups, "workers": workers}))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def attacks(trainer) -> dict[str, str]:
    """name -> program. Each tries to make what it reached show up in its reason."""
    p = {k: str(v) for k, v in trainer["paths"].items()}
    home, run = str(trainer["home"]), str(trainer["run"])
    leak = "raise SystemExit(' | '.join(found) or 'nothing read')\n"
    read_each = ("found = []\nfor path in {paths!r}:\n    try:\n        found.append(open(path).read())\n"
                 "    except OSError as e:\n        found.append(type(e).__name__)\n")
    return {
        # class 1: reads outside the job
        "read_trainer_files": read_each.format(paths=list(p.values())) + leak,
        "read_relative_to_start_dirs": read_each.format(paths=["runs/chart2code-20261204/metrics.jsonl", "../runs",
                                                               ".netrc", "../../.netrc"]) + leak,
        "walk_sys_path": ("import os, sys\nfound = []\nfor entry in sys.path + [os.getcwd(), os.path.expanduser('~')]:\n"
                          "    for top, dirs, files in os.walk(entry or '.'):\n"
                          "        for f in files:\n            try:\n"
                          "                text = open(os.path.join(top, f), errors='ignore').read(100000)\n"
                          "            except OSError:\n                continue\n"
                          "            if 'CANARY' in text:\n                found.append(text[text.index('CANARY'):][:80])\n"
                          "        if len(dirs) > 50:\n            dirs[:] = dirs[:50]\n" + leak),
        "list_home_and_runs": f"import os\nraise SystemExit(repr([os.listdir(d) for d in ({home!r}, {run!r})]))\n",
        "proc_cwd_of_parents": ("import os\nfound = []\nfor pid in (os.getppid(), 1):\n    try:\n"
                                "        found.append(repr(os.listdir(f'/proc/{pid}/cwd')))\n"
                                "        found.append(open(f'/proc/{pid}/cwd/runs/chart2code-20261204/metrics.jsonl').read())\n"
                                "    except OSError as e:\n        found.append(type(e).__name__)\n" + leak),
        # class 2: links planted for the unconfined worker
        "output_linked_to_secret": ("import os\nprint('before')\nos.remove('output.txt')\n"
                                    f"os.symlink({p['secret']!r}, 'output.txt')\nos._exit(1)\n"),
        "output_linked_to_shadow": "import os\nos.remove('output.txt')\nos.symlink('/etc/shadow', 'output.txt')\nos._exit(1)\n",
        "output_linked_to_dev_zero": "import os\nos.remove('output.txt')\nos.symlink('/dev/zero', 'output.txt')\nos._exit(1)\n",
        "output_hardlinked_to_secret": (f"import os\nos.remove('output.txt')\nos.link({p['secret']!r}, 'output.txt')\n"
                                        "os._exit(1)\n"),
        # class 3: a tree no recursive cleanup survives
        "deep_directories": "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\nraise SystemExit('deep')\n",
        "long_names_deeper_than_path_max": ("import os\nfor _ in range(400):\n    os.mkdir('x' * 200)\n    os.chdir('x' * 200)\n"
                                            "open('f', 'w').write('x')\nos.symlink('/etc', 'etc')\nraise SystemExit('long')\n"),
        # class 5: state for a later job
        "sysv_shm_plant": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
                           f"sid = libc.shmget({SHM_KEY}, 4096, 0o1666)\naddr = libc.shmat(sid, None, 0)\n"
                           "ctypes.memmove(addr, b'CANARY-shm-planted', 18)\nraise SystemExit(f'planted {sid}')\n"),
        "tmp_and_dev_shm_plant": ("found = []\nfor path in ('/tmp/mmpost-canary', '/dev/shm/mmpost-canary'):\n    try:\n"
                                  "        open(path, 'w').write('CANARY-tmp-planted')\n        found.append('wrote ' + path)\n"
                                  "    except OSError as e:\n        found.append(type(e).__name__)\n" + leak),
    }


READERS = {  # run after the planting jobs, each in a later group
    "sysv_shm_read": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
                      f"sid = libc.shmget({SHM_KEY}, 0, 0)\nif sid < 0:\n    raise SystemExit('no segment')\n"
                      "addr = libc.shmat(sid, None, 0)\nraise SystemExit(ctypes.string_at(addr, 18).decode())\n"),
    "tmp_and_dev_shm_read": ("found = []\nfor path in ('/tmp/mmpost-canary', '/dev/shm/mmpost-canary'):\n    try:\n"
                             "        found.append(open(path).read())\n    except OSError as e:\n        found.append(type(e).__name__)\n"
                             "raise SystemExit(' | '.join(found))\n"),
}
HONEST_IMPORTS = {  # class 6: what honest programs import must work under the confinement
    "statistics": "import statistics\n" + GOLD.replace("[3, 1, 2]", "[statistics.mean([2, 4]), 1, 2]"),
    "csv": "import csv, io\nrows = list(csv.reader(io.StringIO('3,1,2')))[0]\n" + GOLD.replace("[3, 1, 2]", "[int(v) for v in rows]"),
    "pandas": "import pandas as pd\nvalues = pd.Series([3, 1, 2]).tolist()\n" + GOLD.replace("[3, 1, 2]", "values"),
}


def ipc_objects() -> dict[str, set]:
    out = {}
    for kind in ("shm", "sem", "msg"):
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            lines = []
        out[kind] = {" ".join(line.split()[:2]) for line in lines}
    return out


def sandbox_dirs() -> set:
    return {p.name for p in Path("/tmp").glob("mmpost-sandbox-*")}


@pytest.fixture(scope="module")
def scored(trainer):
    """Every attack in its own RL group with two honest programs; the readers in later groups."""
    before = {"ipc": ipc_objects(), "dirs": sandbox_dirs(), "tmp": Path("/tmp/mmpost-canary").exists()}
    hostile = {**attacks(trainer), **READERS}
    names = list(hostile)
    groups = [[fenced(hostile[name]), honest(f"nonce {name} {uuid.uuid4().hex}"), honest(f"nonce2 {uuid.uuid4().hex}")]
              for name in names]
    groups += [[fenced(code)] for code in HONEST_IMPORTS.values()]
    started = time.monotonic()
    out = run_trainer(trainer, groups)
    out["seconds"] = time.monotonic() - started
    out["by_name"] = dict(zip(names, out["groups"]))
    out["honest_imports"] = dict(zip(HONEST_IMPORTS, out["groups"][len(names):]))
    out["before"] = before
    return out


def test_no_reason_contains_anything_the_job_could_not_read(scored, trainer):
    texts = json.dumps(scored["groups"])
    for name, mark in trainer["marks"].items():
        assert mark not in texts, f"{name} canary leaked into a reward reason"
    assert "root:" not in texts and "CANARY" not in texts.replace('"CANARY-shm-planted', "")


@pytest.mark.parametrize("name", ["read_trainer_files", "read_relative_to_start_dirs", "walk_sys_path",
                                  "list_home_and_runs", "proc_cwd_of_parents"])
def test_reads_outside_the_job_are_denied(scored, trainer, name):
    group = scored["by_name"][name]
    assert group["values"][0] == 0.0, group["reasons"][0]
    assert "CANARY" not in group["reasons"][0]
    for path, mark in ((trainer["paths"][k], trainer["marks"][k]) for k in trainer["paths"]):
        assert path.read_text() == mark + "\n"  # and nothing was changed


@pytest.mark.parametrize("name", ["output_linked_to_secret", "output_linked_to_shadow", "output_linked_to_dev_zero",
                                  "output_hardlinked_to_secret"])
def test_planted_links_are_not_followed_by_the_worker(scored, trainer, name):
    reason = scored["by_name"][name]["reasons"][0]
    assert scored["by_name"][name]["values"][0] == 0.0
    assert trainer["marks"]["secret"] not in reason and "root:" not in reason, reason


@pytest.mark.parametrize("name", ["deep_directories", "long_names_deeper_than_path_max"])
def test_trees_no_recursion_survives_do_not_break_the_worker(scored, name):
    group = scored["by_name"][name]
    assert group["values"][0] == 0.0 and group["reasons"][0].endswith(("deep", "long")), group["reasons"][0]
    assert scored["groups"][-1]["stats"]["infra_retries"] == 0  # no worker died on the way


def test_every_honest_program_in_a_hostile_group_scores_and_reached_a_worker(scored):
    executed = 0
    for group in scored["by_name"].values():
        assert [round(v, 6) for v in group["values"][1:]] == [1.0, 1.0], group["reasons"]
        assert group["stats"]["executed"] >= executed + 3  # the attack and both honest programs ran
        executed = group["stats"]["executed"]


def test_no_state_reaches_a_later_job(scored):
    assert scored["by_name"]["sysv_shm_plant"]["reasons"][0].startswith("SystemExit: planted")  # it had one of its own
    assert scored["by_name"]["sysv_shm_read"]["reasons"][0] == "SystemExit: no segment"
    assert "wrote" not in scored["by_name"]["tmp_and_dev_shm_plant"]["reasons"][0]
    assert "CANARY" not in scored["by_name"]["tmp_and_dev_shm_read"]["reasons"][0]
    assert scored["capabilities"]["ipcns"]


@pytest.mark.parametrize("module", sorted(HONEST_IMPORTS))
def test_honest_imports_work_under_the_confinement(scored, module):
    group = scored["honest_imports"][module]
    assert group["reasons"] == ["ok"] and group["values"][0] == pytest.approx(1.0), group["reasons"]
    assert scored["capabilities"]["honest_imports"] == "ok"


def test_nothing_is_left_behind(scored):
    """No zygote or job process, no sandbox directory, cgroup or IPC object outlives the run."""
    for pid in scored["zygotes"]:
        assert not Path(f"/proc/{pid}").exists() or b"mmpost.sandbox.zygote" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"mmpost.sandbox.zygote" in cmdline and ppid != os.getpid() and ppid not in scored["zygotes"]:
            # (this test session's own sandboxes are the children of this process)
            leftovers.append(pid)
    assert not leftovers
    assert sandbox_dirs() <= scored["before"]["dirs"]
    for pid in scored["zygotes"]:
        assert not list(Path("/sys/fs/cgroup").rglob(f"mmpost-sandbox-{pid}")), "a job cgroup was left"
    assert ipc_objects() == scored["before"]["ipc"]
    assert Path("/tmp/mmpost-canary").exists() == scored["before"]["tmp"]


def test_a_killed_worker_loses_no_honest_job_and_caches_no_failure(trainer):
    """Honest jobs in flight on a worker that dies are run again on a fresh one, and their scores
    are the program's, then and the next time (nothing from the dead worker was cached)."""
    from mmpost.rewards.chart_render import ChartRender
    from mmpost.sandbox import Limits

    reward = ChartRender(workers=1, limits=Limits(wall_seconds=5))
    try:
        slow = [fenced(f"import time\ntime.sleep(0.8)  # {uuid.uuid4().hex}\n{GOLD}") for _ in range(4)]
        zygote = reward.sandbox._workers[0].process.pid
        killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(0.4); os.kill({zygote}, 9)"])
        first = reward([[]] * 4, slow, code=[GOLD] * 4)
        killer.wait()
        assert reward.sandbox.stats["infra_retries"] >= 4, reward.sandbox.stats
        assert [round(v, 6) for v in first] == [1.0] * 4, first.details
        again = reward([[]] * 4, slow, code=[GOLD] * 4)
        assert [round(v, 6) for v in again] == [1.0] * 4
    finally:
        reward.close()


def test_the_two_gold_paths_agree(chart_reward):
    """A reference rendered now and one stored as JSON with the training data score a program alike."""
    from mmpost.rewards.chart_render import ChartRender, validate_features

    features, _, png = chart_reward.execute([GOLD])[0]
    assert validate_features(features) == features  # idempotent: the stored-then-loaded path changes nothing
    fresh, stored = ChartRender(workers=1), ChartRender(workers=1)
    fresh._sandbox = stored._sandbox = chart_reward.sandbox
    fresh.add_reference(GOLD, features, png)
    stored.add_reference(GOLD, json.loads(json.dumps(features)), png)
    program = fenced(GOLD.replace("Sales", "Sales 2024"))
    a, b = fresh([[]], [program], code=[GOLD]), stored([[]], [program], code=[GOLD])
    assert list(a) == list(b) and a.components == b.components


@pytest.mark.slow
def test_honest_job_storm_loses_nothing():
    """300 honest programs in training-sized batches, a quarter of every batch hostile jobs of every
    class: each honest score equals the same program's in a fresh sandbox (value, components, PNG)."""
    from mmpost.tools.bench.sandbox import STORM_ATTACKS, storm

    result = storm(300)
    assert result["honest"] >= 300 and result["hostile"] >= 2 * len(STORM_ATTACKS)
    assert result["lost"] == 0, result["first_lost"]


def test_honest_job_storm_quick():
    """The storm's short version for every CI run: every hostile class present, nothing lost."""
    from mmpost.tools.bench.sandbox import STORM_ATTACKS, storm

    result = storm(48, batch=16, hostile_share=0.25, wall_seconds=1.5)
    assert result["hostile"] >= len(STORM_ATTACKS) and result["lost"] == 0, result["first_lost"]
