"""The supervisor of ``rlhf up`` with real processes: nothing a child spawned outlives it.

The child here behaves like ``rlhf serve`` does: it spawns long-lived grandchildren (vLLM's
EngineCore and workers) and writes into its TMPDIR (vLLM's IPC sockets). ``kill -9`` of
the child must not leave the grandchildren running, neither when the supervisor restarts
it, nor when a plain ``Process`` is stopped after its leader died, nor on stop.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from rlhf.procs import Child, Process, Supervisor
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.timeout(120)

SPAWNER = r"""
import os, subprocess, sys, time
pidfile, ignore_term = sys.argv[1], sys.argv[2] == "1"
sleeper = ("import signal, time; "
           + ("signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else "")
           + "print('ready', flush=True); time.sleep(600)")
kids = [subprocess.Popen([sys.executable, "-c", sleeper], stdout=subprocess.PIPE)
        for _ in range(2)]
for k in kids:  # each has installed its signal handler
    k.stdout.readline()
open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "engine.sock"), "w").close()
with open(pidfile + ".tmp", "w") as f:
    f.write(" ".join(str(k.pid) for k in kids))
os.replace(pidfile + ".tmp", pidfile)
time.sleep(600)
"""


def spawner(pidfile: Path, ignore_term: bool = False) -> list[str]:
    return [sys.executable, "-c", SPAWNER, str(pidfile), "1" if ignore_term else "0"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def grandchildren(pidfile: Path) -> list[int]:
    text = wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30,
                    what=f"{pidfile.name}")
    return [int(p) for p in str(text).split()]


def test_a_killed_child_s_grandchildren_die_before_it_restarts(tmp_path):
    pidfile, tmp = tmp_path / "pids", tmp_path / "tmp-spawner"
    kid = Child("serve", spawner(pidfile), {}, tmp_path / "serve.log", tmp=tmp)
    lines: list[str] = []
    sup = Supervisor([kid], say=lines.append)
    try:
        sup.tick(0.0)
        first = grandchildren(pidfile)
        assert all(alive(p) for p in first)
        assert (tmp / "engine.sock").exists()  # its private TMPDIR
        pidfile.unlink()

        os.kill(kid.proc.pid, signal.SIGKILL)  # like an OOM kill of the server
        wait_for(lambda: sup.tick(0.0) or lines, 30, what="the supervisor to notice")
        assert "serve exited with -9; restarting" in lines[0]
        assert not [p for p in first if alive(p)], "grandchildren outlived their parent"
        assert not tmp.exists()  # its temp files went with it

        sup.tick(1e9)  # past the back-off: restarted, with fresh grandchildren
        second = grandchildren(pidfile)
        assert set(second).isdisjoint(first) and all(alive(p) for p in second)
    finally:
        sup.stop(grace_s=5)
    assert not [p for p in second if alive(p)]


def test_stop_reaches_every_child_s_whole_group_even_if_it_ignores_sigterm(tmp_path):
    kids = [Child("serve", spawner(tmp_path / "serve.pids"), {}, tmp_path / "serve.log",
                  tmp=tmp_path / "t-serve"),
            Child("train", spawner(tmp_path / "train.pids", ignore_term=True), {},
                  tmp_path / "train.log", periodic_s=30, tmp=tmp_path / "t-train"),
            Child("broker", spawner(tmp_path / "broker.pids"), {}, tmp_path / "broker.log")]
    sup = Supervisor(kids, say=lambda _: None, last=("broker",))
    sup.tick(0.0)
    spawned = [p for k in kids for p in grandchildren(tmp_path / f"{k.name}.pids")]
    leaders = [k.proc.pid for k in kids]
    sup.stop(grace_s=2)  # the train grandchildren ignore SIGTERM: SIGKILL after 2 s
    assert not [p for p in spawned + leaders if alive(p)]
    assert not (tmp_path / "t-serve").exists() and not (tmp_path / "t-train").exists()


def test_process_stop_after_its_leader_died_still_stops_the_group(tmp_path):
    pidfile = tmp_path / "pids"
    proc = Process("spawner", spawner(pidfile), tmp_path / "spawner.log")
    spawned = grandchildren(pidfile)
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
    proc.stop(timeout=5)
    assert not [p for p in spawned if alive(p)]
