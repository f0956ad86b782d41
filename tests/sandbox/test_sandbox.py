"""The sandbox contains untrusted code: a first set of attacks (the full suite is issue 8's)."""

import os

import pytest

from mmpost.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def box():
    with Sandbox("mmpost.rewards.chart_figure", workers=2, limits=Limits(wall_seconds=3, cpu_seconds=2)) as sandbox:
        yield sandbox


def test_runs_chart_and_returns_plain_data(box):
    reply = box.run("import matplotlib.pyplot as plt\nplt.bar([1, 2], [3, 4], color='red')\n")
    assert reply["status"] == "ok" and reply["result"]["ok"]
    assert reply["result"]["features"]["series"][0]["y"] == [3.0, 4.0]


def test_infinite_loop_is_killed(box):
    reply = box.run("while True:\n    pass\n")
    assert reply["status"] in ("timeout", "crash")
    assert reply["seconds"] < 4


def test_sleep_past_deadline_is_killed(box):
    reply = box.run("import time\ntime.sleep(100)\n")
    assert reply["status"] == "timeout"


def test_environment_is_cleared(box):
    os.environ["MMPOST_TEST_SECRET"] = "hunter2"
    reply = box.run("import os\nraise RuntimeError(repr(sorted(os.environ)))\n")
    assert "MMPOST_TEST_SECRET" not in reply["result"]["error"]
    assert "hunter2" not in reply["result"]["error"]


def test_no_network(box):
    if not box.network.startswith(("netns", "userns")):
        pytest.skip(f"no network namespace on this machine: {box.network}")
    reply = box.run("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n")
    assert not reply["result"]["ok"]
    assert "OSError" in reply["result"]["error"] or "Error" in reply["result"]["error"]


def test_memory_bomb_fails_inside_child(box):
    reply = box.run("x = bytearray(8 << 30)\n")
    assert reply["status"] == "ok" and not reply["result"]["ok"]
    assert "MemoryError" in reply["result"]["error"]


def test_fake_score_on_stdout_is_ignored(box):
    reply = box.run('print(\'{"ok": true, "features": {}}\')\nimport os\nos._exit(0)\n')
    assert reply["status"] == "crash" and reply["result"] is None


def test_many_jobs_concurrently(box):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\n"
    replies = box.map([code] * 20)
    assert all(r["status"] == "ok" and r["result"]["ok"] for r in replies)
