"""Child processes the way the platform runs them, and the supervisor of ``rlhf up``.

Every child starts in its own session (``start_new_session``), so it and everything it
spawns (vLLM's EngineCore and workers, a training run's rollout engine) share one
session id and one process group. Stopping a child means stopping that whole session:
SIGTERM to every member, SIGKILL after a grace, and waiting until none is left — also
when the leader has already died (``kill -9`` of a server leaves its engine running
otherwise). Each supervised child also gets a private ``TMPDIR``, removed with it, so
vLLM's IPC sockets and staging directories do not pile up in the system temp folder.

Used by ``rlhf up``, ``rlhf demo``, the benchmarks and the end-to-end test fixtures, so
there is one way to start and stop a process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from feedback.broker import free_port

__all__ = ["Child", "PortInUse", "Process", "Supervisor", "backoff_s", "free_port",
           "kill_session", "port_conflicts", "rlhf_command", "session_members",
           "stop_group"]

GRACE_S = 10.0
"""Seconds a stopping process group gets between SIGTERM and SIGKILL."""


def rlhf_command(*args: str) -> list[str]:
    """``python -m rlhf <args>`` with this interpreter."""
    return [sys.executable, "-m", "rlhf", *args]


# -- process sessions --------------------------------------------------------------------

def session_members(sid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose session id is ``sid``.

    A child started with ``start_new_session`` leads a session whose id is its pid; its
    descendants stay in it unless they call ``setsid`` themselves, and the session id
    survives the leader's death (unlike the parent/child links psutil walks).
    """
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or os.getsid(proc.pid) != sid:
                continue
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
        members.append(proc)
    return members


def _signal_all(members: Iterable[psutil.Process], sig: int) -> None:
    for proc in members:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass  # gone already


def kill_session(sid: int, leader: subprocess.Popen | None = None,
                 grace_s: float = GRACE_S) -> None:
    """Stop every process of session ``sid``: SIGTERM, then SIGKILL whatever is left after
    ``grace_s``; returns when none is left. ``leader`` (the Popen of the session leader) is
    reaped on the way, so it cannot linger as a zombie."""
    _signal_all(session_members(sid), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        if leader is not None:
            leader.poll()
        left = session_members(sid)
        if not left:
            return
        if time.monotonic() >= deadline:
            _signal_all(left, signal.SIGKILL)
            psutil.wait_procs(left, timeout=10)
            if leader is not None:
                leader.poll()
            return
        time.sleep(0.05)


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop the session ``proc`` leads (it was started with ``start_new_session``): SIGTERM
    to all of it, SIGKILL after ``timeout``. Also cleans up after a leader that already
    exited, whose children would otherwise keep running."""
    kill_session(proc.pid, proc, timeout)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # cannot happen once the session is empty
        pass


# -- ports -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PortInUse:
    """A port a process needs that something else already listens on."""

    name: str
    port: int
    holder: str | None  # "pid 123: python -m rlhf serve …", when it can be found

    def __str__(self) -> str:
        who = f" by {self.holder}" if self.holder else ""
        return f"{self.name} port {self.port} is already in use{who}"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``host:port`` now. Binds with SO_REUSEADDR like uvicorn,
    Tansu and gRPC do (so TIME_WAIT leftovers do not count) but without SO_REUSEPORT, so a
    gRPC server that allows port sharing still counts as holding it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """Who listens on ``port``, as "pid N: command line", if this user may see it."""
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                and conn.pid:
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline()) or "?"
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid}: {cmd[:160]}"
    return None


def port_conflicts(ports: dict[str, int], host: str = "127.0.0.1") -> list[PortInUse]:
    """The named ports (name → port; 0 means "pick one" and is skipped) that are taken,
    with their holders. Ports listed twice are a conflict too."""
    out = []
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if not port:
            continue
        if port in seen:
            out.append(PortInUse(name, port, f"this configuration ({seen[port]})"))
        elif not port_is_free(port, host):
            out.append(PortInUse(name, port, port_holder(port)))
        seen.setdefault(port, name)
    return out


# -- one child process -------------------------------------------------------------------

class Process:
    """A started child; ``wait_http`` until it answers, ``stop`` when done."""

    def __init__(self, name: str, cmd: list[str], log_path: Path | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 append_log: bool = False):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "a" if append_log else "w") if log_path \
            else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_http(self, url: str, timeout: float, interval: float = 0.5) -> float:
        """Poll ``url`` until it answers 200; returns the seconds it took. Stops the
        process and raises if it exits or the time runs out."""
        started = time.monotonic()
        try:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                       f"log: {self.log_path}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(interval)
            raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; "
                               f"log: {self.log_path}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        stop_group(self.proc, timeout)
        if not isinstance(self._log, int):  # subprocess.DEVNULL is an int
            self._log.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the supervisor ----------------------------------------------------------------------

def backoff_s(restarts: int) -> float:
    """Seconds before the ``restarts``-th restart of a crashed child: 0.5, 1, 2, 4, 8, 16,
    30, 30… A single crash costs half a second more than the process's own start
    (benchmarks/recovery.py); a crash loop still backs off to 30 s."""
    return min(30.0, 0.5 * 2.0 ** (min(max(restarts, 1), 7) - 1))


def private_tmp_root(home: Path) -> Path:
    """The folder holding the children's private TMPDIRs of the ``rlhf up`` in ``home``.

    It sits in the system temp folder under a short name derived from ``home`` (not
    inside ``home``): vLLM puts Unix sockets in TMPDIR, and a socket path must stay
    under 108 bytes, which a deep home (a test's tmp_path) would exceed.
    """
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"rlhf-{digest}"


@dataclass
class Child:
    """One supervised command (for ``rlhf up``: an ``rlhf`` sub-command).

    Long-running children (``periodic_s`` None) are restarted with a growing back-off when
    they exit; periodic ones (a training cycle) are started again ``periodic_s`` after
    they finish. Before any restart the dead child's whole session is stopped and its
    private TMPDIR (``tmp``, when set) emptied.
    """

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    periodic_s: float | None = None
    tmp: Path | None = None
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    history: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = {**os.environ, **self.env}
        if self.tmp is not None:
            _fresh_dir(self.tmp)
            env.update(TMPDIR=str(self.tmp), TMP=str(self.tmp), TEMP=str(self.tmp))
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def exited(self, code: int, now: float) -> str | None:
        """Book an exit with ``code`` at ``now``: schedule the next start; returns the line
        to print, if any. (The pure part of ``tick``.)"""
        self.history.append(code)
        if self.periodic_s is not None:
            self.next_start = now + self.periodic_s
            return f"{self.name} finished (exit {code})" if code else None
        self.restarts += 1
        self.next_start = now + backoff_s(self.restarts)
        return f"{self.name} exited with {code}; restarting (see {self.log})"

    def tick(self, now: float) -> str | None:
        """Start or restart when due; returns a line to print, if any."""
        if self.proc is not None and self.proc.poll() is None:
            return None
        if self.proc is not None:  # it exited: its children may not have
            proc, self.proc = self.proc, None
            kill_session(proc.pid, proc)
            self._clean_tmp()
            return self.exited(proc.returncode, now)
        if now >= self.next_start:
            self.start()
        return None

    def signal_stop(self) -> None:
        """SIGTERM the child's whole session (``await_stop`` waits for it)."""
        if self.proc is not None:
            _signal_all(session_members(self.proc.pid), signal.SIGTERM)

    def await_stop(self, grace_s: float = GRACE_S) -> None:
        """Wait until the session is gone (SIGKILL after ``grace_s``), then clean up."""
        if self.proc is not None:
            proc, self.proc = self.proc, None
            kill_session(proc.pid, proc, grace_s)
        self._clean_tmp()

    def stop(self, grace_s: float = GRACE_S) -> None:
        self.signal_stop()
        self.await_stop(grace_s)

    def _clean_tmp(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


class Supervisor:
    """Runs children: ``tick`` starts and restarts them, ``stop`` stops them all.

    ``stop`` signals every child's session first and then awaits them together, so the
    whole platform stops within one grace period; the children named in ``last`` (the
    broker: the others flush events to it) are stopped after the rest.
    """

    def __init__(self, kids: Sequence[Child], say: Callable[[str], None] = print,
                 last: Sequence[str] = ()):
        self.kids = list(kids)
        self.say = say
        self.last = set(last)

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for kid in self.kids:
            line = kid.tick(now)
            if line:
                self.say(line)

    def stop(self, grace_s: float = GRACE_S) -> None:
        first = [k for k in self.kids if k.name not in self.last]
        later = [k for k in self.kids if k.name in self.last]
        for batch in (first, later):
            for kid in batch:
                kid.signal_stop()
            for kid in batch:
                kid.await_stop(grace_s)
