"""Soak: `rlhf up` under mixed load and repeated crashes; at the end nothing is lost,
doubled or growing.

    python benchmarks/soak.py --minutes 10 [--database-url postgresql://…]

A fresh `rlhf up` (durable embedded broker, ingester, server, deploy controller; periodic
training off so the load is the serving and feedback paths) takes, for ``--minutes``:

* closed-loop clients: streamed chat completions (n=2), each followed by one piece of
  feedback of a random kind (ranking, comparison, rating, demonstration) about it, and
  every fifth request an invalid piece of feedback (expected 422); feedback answered 503
  (broker down) or lost in transport (server down) is resubmitted with the same
  ``event_id`` until it is accepted;
* raw invalid events produced straight to ``rlhf.feedback`` (expected in the DLQ);
* chaos at fixed points of the run: SIGKILL of the ingester three times, of the broker
  (Tansu and its object store) twice and of the serving replica once, each followed by
  the time until that part works again; a forced promotion and a rollback.

The broker is durable, so nothing is drained before it is killed. At the end it checks
that every acknowledged event is stored exactly once (per kind), that every served
completion is stored, that the invalid raw events reached the DLQ, and that RSS and the
number of metric series stayed flat. It prints a table and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402

from rlhf.procs import Process, free_port, rlhf_command  # noqa: E402


@dataclass
class Tally:
    """What the clients saw; one lock guards it all."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    served: set[str] = field(default_factory=set)
    accepted: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def status(self, what: str, code: int | str) -> None:
        with self.lock:
            self.statuses[f"{what} {code}"] += 1


def feedback_about(request_id: str, prompt: str, kind: str) -> dict:
    body: dict = {"type": kind, "event_id": f"soak-{uuid.uuid4().hex}"}
    if kind == "ranking":
        body |= {"request_id": request_id, "choices": [0, 1], "ranks": [1, 2]}
    elif kind == "comparison":
        body |= {"request_id": request_id, "choice_a": 0, "choice_b": 1, "preferred": "a"}
    elif kind == "rating":
        body |= {"request_id": request_id, "choice": 0, "score": random.randint(1, 7)}
    else:
        body |= {"prompt": prompt, "response": "A calm and good answer."}
    return body


INVALID = [{"type": "ranking", "choices": [0, 1], "ranks": [1]},  # no request_id, no texts
           {"type": "rating", "score": "high"},
           {"type": "comparison", "preferred": "c"},
           {"type": "demonstration", "prompt": "x", "response": ""}]


def client(url: str, key: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        i = 0
        while not stop.is_set():
            i += 1
            prompt = f"Describe the ocean, take {seed}-{i}."
            request_id = stream_completion(http, prompt, tally)
            if request_id is None:
                continue
            kind = rng.choice(["ranking", "comparison", "rating", "demonstration"])
            submit(http, feedback_about(request_id, prompt, kind), tally, stop)
            if i % 5 == 0:
                try:
                    r = http.post("/v1/feedback", json=rng.choice(INVALID))
                except httpx.HTTPError:
                    tally.status("invalid feedback", "transport error")
                    continue
                tally.status("invalid feedback", r.status_code)
                if r.status_code not in (400, 422):
                    tally.unexpected.append(f"invalid feedback got {r.status_code}")


def stream_completion(http: httpx.Client, prompt: str, tally: Tally) -> str | None:
    body = {"model": "policy", "messages": [{"role": "user", "content": prompt}],
            "n": 2, "max_tokens": 16, "stream": True}
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            tally.status("completion", r.status_code)
            if r.status_code != 200:
                r.read()
                if r.status_code not in (429, 503):
                    tally.unexpected.append(f"completion {r.status_code}: {r.text[:200]}")
                return None
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    except httpx.HTTPError:
        tally.status("completion", "transport error")  # the replica was killed mid-stream
        time.sleep(0.5)
        return None
    if not lines or lines[-1] != "data: [DONE]":
        tally.status("completion", "cut stream")
        return None
    request_id = json.loads(lines[0][6:])["id"]
    with tally.lock:
        tally.served.add(request_id)
    return request_id


def submit(http: httpx.Client, body: dict, tally: Tally, stop: threading.Event) -> None:
    """POST until 202; 503 (broker down) is retried with the same event_id."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = http.post("/v1/feedback", json=body)
        except httpx.HTTPError:
            tally.status("feedback", "transport error")
            time.sleep(0.5)
            continue
        tally.status("feedback", r.status_code)
        if r.status_code == 202:
            with tally.lock:
                tally.accepted[body["type"]] += 1
            return
        if r.status_code != 503:
            tally.unexpected.append(f"feedback {r.status_code}: {r.text[:200]}")
            return
        time.sleep(0.5)
    tally.unexpected.append(f"feedback {body['event_id']} never accepted")


def child_pid(up: Process, name: str) -> int | None:
    """The pid of ``rlhf up``'s child running ``rlhf <name>`` (the group leader)."""
    for p in psutil.Process(up.proc.pid).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "rlhf" in " ".join(cmd) and name in cmd and "-m" in cmd:
            return p.pid
    return None


def tree_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def series(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))


def produce_invalid(bootstrap: str, topic: str, n: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(n):
        producer.send(topic, key=f"bad-{i}".encode(), value=b'{"type": "ranking", "oops": ')
    producer.flush(30)
    producer.close()


def count_topic(bootstrap: str, topic: str) -> int:
    """Records in ``topic``: high watermarks (from a fetch: end_offsets() is wrong on
    Tansu, see core/consumer.py) minus the beginning offsets."""
    from kafka import KafkaConsumer, TopicPartition

    from core.consumer import high_watermarks

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        return sum(high_watermarks(consumer, parts).values()) - sum(
            consumer.beginning_offsets(parts).values())
    finally:
        consumer.close()


DB_URL: dict[str, str] = {}
"""The store every process of the soak's `rlhf up` uses (set in main)."""


def stored(home: Path) -> dict[str, int]:
    from feedback.store import FeedbackStore

    store = FeedbackStore(DB_URL.get("url") or f"sqlite:///{home / 'feedback.db'}")
    try:
        return store.counts()
    finally:
        store.close()


def missing_completions(home: Path, served: set[str]) -> list[str]:
    """Served request ids the store does not hold (stored ones of cut streams are extra)."""
    from feedback.store import FeedbackStore

    store = FeedbackStore(DB_URL.get("url") or f"sqlite:///{home / 'feedback.db'}")
    try:
        return [r for r in sorted(served) if store.get_completion(r) is None]
    finally:
        store.close()


def wait_drained(home: Path, tally: Tally, timeout: float) -> bool:
    """Until the store holds every accepted event and served completion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = stored(home)
        with tally.lock:
            done = all(counts.get(k, 0) >= n for k, n in tally.accepted.items()) and \
                counts["completions"] >= len(tally.served)
        if done:
            return True
        time.sleep(1)
    return False


def add_second_policy(home: Path) -> str:
    from core.registry import Registry
    from training.tiny_model import build_tiny_model

    src = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-seed-7", seed=7)
    return Registry(home / "registry").create_version(
        "policy", src, {"parent": "policy-0000", "config": {"soak": True}}).version


def main() -> int:  # noqa: PLR0915 - one scenario, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--invalid-raw", type=int, default=50)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--database-url", default=None,
                    help="Feedback store of the whole platform (default: SQLite in --home).")
    args = ap.parse_args()
    if args.database_url:
        DB_URL["url"] = args.database_url

    home = args.home or Path(tempfile.mkdtemp(prefix="rlhf-soak-"))
    ports = {n: free_port() for n in ("HTTP_PORT", "GRPC_PORT", "BROKER_PORT", "DEPLOY_PORT",
                                      "INGEST_METRICS_PORT", "WORKBENCH_PORT")}
    env = {**{f"RLHF_UP__{k}": str(v) for k, v in ports.items()}, "RLHF_UP__HOME": str(home),
           "RLHF_UP__CONFIG_DIR": str(REPO / "training" / "configs" / "demo"),
           "RLHF_UP__TRAIN_EVERY_S": "1000000", "RLHF_UP__AUTO_PROMOTE": "false",
           **({"RLHF_UP__DATABASE_URL": args.database_url} if args.database_url else {})}
    url = f"http://127.0.0.1:{ports['HTTP_PORT']}"
    deploy = f"http://127.0.0.1:{ports['DEPLOY_PORT']}"
    bootstrap = f"127.0.0.1:{ports['BROKER_PORT']}"
    up = Process("rlhf up", rlhf_command("up"), home.parent / f"{home.name}-up.log", env=env)
    tally, stop = Tally(), threading.Event()
    chaos: list[tuple[float, str, str]] = []
    try:
        # 1. Start the platform; a second policy to promote and roll back to.
        up.wait_http(url + "/ready", timeout=600)
        up.wait_http(deploy + "/health", timeout=120)
        keys = {role: k for k, role in json.loads((home / "keys.json").read_text()).items()}
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        second = add_second_policy(home)
        produce_invalid(bootstrap, "rlhf.feedback", args.invalid_raw)

        # 2. Load.
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(url, keys["labeler"], stop, tally, i),
                                    daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        duration = args.minutes * 60

        def at(share: float) -> None:
            time.sleep(max(0.0, started + share * duration - time.monotonic()))

        def note(what: str, detail: str) -> None:
            chaos.append((time.monotonic() - started, what, detail))
            print(f"[{chaos[-1][0]:7.1f}s] {what}: {detail}", flush=True)

        def kill(name: str) -> tuple[int | None, float]:
            pid = child_pid(up, name)
            if pid:
                os.killpg(pid, signal.SIGKILL)
            return pid, time.monotonic()

        def recovered(name: str, works, since: float, old: int | None) -> None:
            """Until a new child runs and ``works()``; notes the seconds it took."""
            deadline = since + 300
            while time.monotonic() < deadline:
                pid = child_pid(up, name)
                if pid and pid != old and works():
                    took = time.monotonic() - since
                    recovery[name].append(took)
                    note(f"{name} back", f"{took:.1f} s")
                    return
                time.sleep(0.2)
            note(f"{name} back", "NOT within 300 s")
            tally.unexpected.append(f"{name} did not recover")

        def storing() -> bool:
            """A feedback event posted now reaches the store (broker and ingester work)."""
            body = feedback_about("", "Probe the pipeline.", "demonstration")
            try:
                r = httpx.post(url + "/v1/feedback", json=body, timeout=10,
                               headers={"Authorization": f"Bearer {keys['labeler']}"})
            except httpx.HTTPError:
                return False
            if r.status_code != 202:
                return False
            with tally.lock:
                tally.accepted["demonstration"] += 1
            before = stored(home).get("demonstration", 0)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if stored(home).get("demonstration", 0) > before:
                    return True
                time.sleep(0.2)
            return False

        def ready() -> bool:
            try:
                return httpx.get(url + "/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        # 3. Chaos at fixed points; baseline RSS and series once warm.
        recovery: dict[str, list[float]] = {"ingest": [], "broker": [], "serve": []}
        at(0.08)
        base_rss = tree_rss_mb(child_pid(up, "serve"))
        base_series = series(url)
        for share, action in ((0.12, "ingest"), (0.2, "promote"), (0.28, "broker"),
                              (0.38, "ingest"), (0.48, "serve"), (0.6, "rollback"),
                              (0.68, "ingest"), (0.8, "broker")):
            at(share)
            if action == "promote":
                r = httpx.post(deploy + "/v1/deploy/promote", headers=admin, timeout=120,
                               json={"version": second, "force": True, "reason": "soak"})
                note("promote", f"{second}: {r.status_code}")
            elif action == "rollback":
                r = httpx.post(deploy + "/v1/deploy/rollback", headers=admin, timeout=120,
                               json={"reason": "soak"})
                note("rollback", f"{r.status_code}")
            else:
                pid, since = kill(action)
                note(f"SIGKILL {action}", str(pid))
                recovered(action, ready if action == "serve" else storing, since, pid)
        at(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        end_rss = tree_rss_mb(child_pid(up, "serve"))
        end_series = series(url)

        # 4. Everything accepted is stored exactly once; the DLQ holds the raw invalid ones.
        drained = wait_drained(home, tally, 180)
        counts = stored(home)
        dlq = count_topic(bootstrap, "rlhf.feedback.dlq")
        missing = missing_completions(home, tally.served)
    finally:
        stop.set()
        up.stop(timeout=60)

    elapsed = time.monotonic() - started
    checks = {
        "every accepted event stored exactly once":
            drained and all(counts.get(k, 0) == n for k, n in tally.accepted.items()),
        "every served completion stored": not missing,
        "no unexpected failure": not tally.unexpected,
        "every raw invalid event dead-lettered": dlq >= args.invalid_raw,
        "serving RSS flat (< +25 %)": end_rss < base_rss * 1.25,
        "metric series flat (< +10 %)": end_series < base_series * 1.10,
    }
    print(f"\nsoak: {elapsed / 60:.1f} min, {args.clients} clients, home {home}")
    print("| what | value |\n|---|---|")
    print("| events | acknowledged | stored | lost | duplicated |\n|---|---|---|---|---|")
    served_kept = len(tally.served) - len(missing)
    rows = [("completions (served)", len(tally.served), served_kept)] + [
        (kind, tally.accepted[kind], counts.get(kind, 0))
        for kind in ("ranking", "comparison", "rating", "demonstration")]
    for kind, acked, kept in rows:
        print(f"| {kind} | {acked} | {kept} | {max(0, acked - kept)} | {max(0, kept - acked)} |")
    print("\n| what | value |\n|---|---|")
    for name, took in recovery.items():
        shown = ", ".join(f"{t:.1f}" for t in took) or "—"
        print(f"| recovery after SIGKILL of {name} (s) | {shown} |")
    print(f"| responses by status | {dict(sorted(tally.statuses.items()))} |")
    print(f"| DLQ messages at the end | {dlq} (raw invalid sent: {args.invalid_raw}) |")
    print(f"| store | {DB_URL.get('url') or 'SQLite'} |")
    print(f"| serving tree RSS MB start → end | {base_rss:.0f} → {end_rss:.0f} |")
    print(f"| /metrics series start → end | {base_series} → {end_series} |")
    for t, what, detail in chaos:
        print(f"| chaos at {t:.0f} s | {what}: {detail} |")
    for name, ok in checks.items():
        print(f"| check: {name} | {'PASS' if ok else 'FAIL'} |")
    if missing:
        print(f"missing completions ({len(missing)}): {missing[:10]}")
    print(f"stored completions in all (cut streams included): {counts['completions']}")
    for line in tally.unexpected[:20]:
        print("unexpected:", line)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
